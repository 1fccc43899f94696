"""Models built in code and compiled once per test session."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from neo_edge_runtime import compile_model
from neo_edge_runtime.compile import zoo


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def ops_onnx(models_dir):
    path = models_dir / "ops.onnx"
    onnx.save(zoo.ops_model(16), path)
    return path


@pytest.fixture(scope="session")
def residual_onnx(models_dir):
    """A 1x1 stem to 16 channels, then a ResNet basic block on a 20x20 map: two 3x3
    convolutions Winograd takes (batch norms, ReLU, residual add in the epilogue)."""
    g = zoo.GraphBuilder("residual", seed=6)
    x = g.relu(g.conv("input", 3, 16, 1))
    y = g.relu(g.bn(g.conv(x, 16, 16, 3), 16))
    y = g.relu(g.add(g.bn(g.conv(y, 16, 16, 3), 16), x))
    path = models_dir / "residual.onnx"
    onnx.save(g.model([1, 3, 20, 20], y, [1, 16, 20, 20]), path)
    return path


@pytest.fixture(scope="session")
def host_artifact(ops_onnx, tmp_path_factory):
    return compile_model(ops_onnx, "host", tmp_path_factory.mktemp("art") / "ops-host",
                         metadata={"labels": [str(k) for k in range(10)]})


@pytest.fixture(autouse=True)
def one_measuring_pass(monkeypatch):
    """Tuning tests check what is measured and recorded, not how steady the timing is:
    one pass over the template candidates (still on all cores and on one) instead of
    the compiler's two."""
    from neo_edge_runtime.compile import compiler

    monkeypatch.setattr(compiler, "MEASURING_PASSES", 1)


@pytest.fixture()
def rng():
    return np.random.default_rng(0)
