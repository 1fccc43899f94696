"""ModelStore: the device's current and previous model, swapped atomically.

Layout under ``root``::

    versions/<version>-<digest12>/   one artifact folder per installed version
    current  -> versions/...         symlink, replaced atomically (rename)
    previous -> versions/...         the version before, kept for rollback

A new version becomes ``current`` only after it verified, loaded and passed a smoke
inference (finite outputs) in a separate process, so that a library that crashes on
load (a bus error from a bad file, say) cannot take the serving process down with
it. Otherwise it is deleted and the old version keeps serving: the device's backup
plan for bad updates.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from . import artifact
from .errors import ArtifactError, NeoEdgeError
from .runtime import EdgeModel

#: A model version as the store names its folder after it: no path separators, no leading
#: dot (``../x`` would install outside the store).
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class ModelStore:
    """Keeps the current and previous version of a model in ``root``.

    Parameters
    ----------
    root:
        A folder the store owns (created if missing).
    num_threads:
        Passed to :meth:`EdgeModel.load`.
    """

    def __init__(self, root: str | os.PathLike, *, num_threads: Optional[int] = None):
        self.root = Path(root)
        self.num_threads = num_threads
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._current: Optional[EdgeModel] = None
        if self._link("current").exists():
            self._current = self._load_current()

    def _load_current(self) -> EdgeModel:
        """The current version, or, when it no longer loads (a corrupt file on disk), the
        previous one, which then becomes current: a device keeps serving while it has a
        good version."""
        try:
            return EdgeModel.load(self._link("current"), num_threads=self.num_threads)
        except NeoEdgeError as exc:
            previous = self.previous_path
            if previous is None or previous == self.current_path:
                raise ArtifactError(f"model store {str(self.root)!r}: the current version does "
                                    f"not load and there is no previous one: {exc}") from exc
            try:
                model = EdgeModel.load(previous, num_threads=self.num_threads)
            except NeoEdgeError as again:
                raise ArtifactError(f"model store {str(self.root)!r}: neither the current "
                                    f"version ({exc}) nor the previous one ({again}) "
                                    f"loads") from again
            self._point("current", previous)
            return model

    def _link(self, name: str) -> Path:
        return self.root / name

    @property
    def current(self) -> Optional[EdgeModel]:
        """The model serving now, or ``None`` before the first install."""
        return self._current

    @property
    def current_path(self) -> Optional[Path]:
        link = self._link("current")
        return link.resolve() if link.exists() else None

    @property
    def previous_path(self) -> Optional[Path]:
        link = self._link("previous")
        return link.resolve() if link.exists() else None

    def _point(self, name: str, target: Path) -> None:
        tmp = self.root / f".{name}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(os.path.relpath(target, self.root), tmp)
        os.replace(tmp, self._link(name))  # atomic on POSIX

    def install(self, artifact_dir: str | os.PathLike,
                smoke_input: Optional[Mapping[str, np.ndarray]] = None) -> EdgeModel:
        """Install the artifact at ``artifact_dir`` and make it current.

        The artifact is copied into the store, verified, loaded, and run once on
        ``smoke_input`` (default: zeros of the declared shapes). Only if all of that
        passes (and every output is finite) does ``current`` switch to it; the old
        current becomes ``previous``. On failure the copy is removed, ``current`` is
        unchanged, and :class:`ArtifactError` says why.
        """
        src = Path(artifact_dir)
        with self._lock:
            links = [str(p.relative_to(src)) for p in sorted(src.rglob("*")) if p.is_symlink()]
            if links:
                raise ArtifactError(f"an artifact folder must hold plain files only, not links "
                                    f"(which may point out of it); got {', '.join(links)}")
            manifest = artifact.verify(src)
            version = manifest["model"].get("version")
            if not isinstance(version, str) or not _VERSION.match(version):
                raise ArtifactError(f"model version must be letters, digits, '.', '_', '+' or "
                                    f"'-' (starting with a letter or digit, at most 128); got "
                                    f"{version!r}")
            digest = artifact.artifact_digest(src)[:12]
            name = f"{version}-{digest}"
            dest = self.root / "versions" / name
            if self.current_path == dest.resolve():
                return self._current
            staging = Path(tempfile.mkdtemp(prefix=".install-", dir=self.root / "versions"))
            try:
                shutil.copytree(src, staging, dirs_exist_ok=True)
                _smoke_in_subprocess(staging, smoke_input)
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(staging, dest)
                model = EdgeModel.load(dest, num_threads=self.num_threads)
            except NeoEdgeError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise ArtifactError(f"new model version {name} was not installed, "
                                    f"the current one keeps serving: {exc}") from exc
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            old = self.current_path
            if old is not None:
                self._point("previous", old)
            self._point("current", dest)
            self._current = model
            self._prune()
            return model

    def rollback(self) -> EdgeModel:
        """Make the previous version current again (and the current one previous)."""
        with self._lock:
            prev, cur = self.previous_path, self.current_path
            if prev is None:
                raise ArtifactError(f"model store {str(self.root)!r} has no previous version "
                                    "to roll back to")
            model = EdgeModel.load(prev, num_threads=self.num_threads)
            self._point("current", prev)
            if cur is not None:
                self._point("previous", cur)
            self._current = model
            return model

    def _prune(self) -> None:
        keep = {p for p in (self.current_path, self.previous_path) if p is not None}
        for d in (self.root / "versions").iterdir():
            if d.resolve() not in keep and not d.name.startswith(".install-"):
                shutil.rmtree(d, ignore_errors=True)


def smoke_test(path: str | os.PathLike, smoke_input=None) -> None:
    """Load the artifact and run one inference; raise if any output is not finite."""
    model = EdgeModel.load(path)
    inputs = smoke_input or {i["name"]: np.zeros(i["shape"], dtype=i["dtype"])
                             for i in model.inputs}
    for name, value in model.predict(inputs).items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ArtifactError(f"smoke inference gave non-finite values in output {name!r}")
    model.close()


def _smoke_in_subprocess(path: Path, smoke_input, timeout: float = 300.0) -> None:
    with tempfile.TemporaryDirectory(prefix="neo-edge-smoke-") as tmp:
        cmd = [sys.executable, "-m", "neo_edge_runtime.store", str(path)]
        if smoke_input is not None:
            np.savez(Path(tmp) / "input.npz", **dict(smoke_input))
            cmd.append(str(Path(tmp) / "input.npz"))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "PYTHONPATH": _pythonpath()})
        except subprocess.TimeoutExpired:
            raise ArtifactError(f"smoke inference did not finish within {timeout:.0f}s") from None
    if proc.returncode < 0:
        raise ArtifactError(f"loading it crashed the smoke-test process "
                            f"({signal.Signals(-proc.returncode).name})")
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise ArtifactError(lines[-1] if lines else f"smoke test exited {proc.returncode}")


def _pythonpath() -> str:
    """Make this very package importable in the child, wherever it was loaded from."""
    here = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([here] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p])


if __name__ == "__main__":  # the smoke-test child: python -m neo_edge_runtime.store DIR [NPZ]
    try:
        data = np.load(sys.argv[2]) if len(sys.argv) > 2 else None
        smoke_test(sys.argv[1], {k: data[k] for k in data.files} if data is not None else None)
    except NeoEdgeError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
