"""Import Lambda handlers from their asset folders.

Each ``lambda/<function>/`` folder is a Lambda asset, not a package: Lambda imports
``<function>.py`` with the folder on ``sys.path``. Tests do the same, but under a unique module
name (``lambda_<function>``) so that two handlers, or two imports of one handler under
different environment variables, never collide in ``sys.modules``.
"""

from __future__ import annotations

import importlib.util
import itertools
import pathlib
import sys
import types
from collections.abc import Callable, Iterator

import pytest

LAMBDA_ROOT = pathlib.Path(__file__).resolve().parents[2] / "lambda"

_counter = itertools.count()


def import_lambda(function: str) -> types.ModuleType:
    """Import ``lambda/<function>/<function>.py`` afresh, as Lambda would at a cold start.

    The module runs its import-time code (environment checks, client creation) every call, so
    set the environment variables (and start moto) before calling this.
    """
    folder = LAMBDA_ROOT / function
    path = folder / f"{function}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no handler module at {path}")
    name = f"lambda_{function}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Helper modules that sit next to the handler are imported by their plain names.
    sys.path.insert(0, str(folder))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.path.remove(str(folder))
    return module


@pytest.fixture
def load_lambda() -> Iterator[Callable[[str], types.ModuleType]]:
    """Return :func:`import_lambda`; the modules it imported are forgotten afterwards."""
    loaded: list[str] = []

    def load(function: str) -> types.ModuleType:
        module = import_lambda(function)
        loaded.append(module.__name__)
        return module

    yield load
    for name in loaded:
        sys.modules.pop(name, None)
