"""ModelStore: the device's current and previous model, swapped atomically.

Layout under ``root``::

    versions/<version>-<digest12>/   one artifact folder per installed version
    current  -> versions/...         symlink, replaced atomically (rename)
    previous -> versions/...         the version before, kept for rollback
    candidate -> versions/...        a version on trial beside the current one (stage)
    refused.json                     versions refused on this device, with the reason

With a signing public key, every version is checked against it before anything of it
is loaded: when it is installed (the folder given, then the store's own copy), and each
time it is loaded again (start, rollback).

A new version becomes ``current`` only after it verified, loaded and passed a smoke
inference (finite outputs) in a separate process, so that a library that crashes on
load (a bus error from a bad file, say) cannot take the serving process down with
it. Otherwise it is deleted and the old version keeps serving: the device's backup
plan for bad updates.
"""

from __future__ import annotations

import json
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

import logging

import numpy as np

from . import artifact
from .errors import ArtifactError, NeoEdgeError, SignatureError
from .runtime import EdgeModel
from .signature import PublicKeyLike, load_public_key

logger = logging.getLogger(__name__)

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
    public_key, allow_unsigned:
        Passed to :meth:`EdgeModel.load` (and checked on the folder :meth:`install` is
        given, before it is copied). The key is read once, here: a bad one raises
        :class:`~neo_edge_runtime.errors.SignatureError` at once. Default: no
        signature is checked.

    When the store holds versions that the key refuses (a device that stored unsigned
    versions before it was given a key), it starts with no current version rather than
    serve them, and logs why; the next :meth:`install` replaces them.
    """

    def __init__(self, root: str | os.PathLike, *, num_threads: Optional[int] = None,
                 public_key: Optional[PublicKeyLike] = None, allow_unsigned: bool = False):
        self.root = Path(root)
        self.num_threads = num_threads
        self.public_key = load_public_key(public_key) if public_key is not None else None
        self.allow_unsigned = allow_unsigned
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._current: Optional[EdgeModel] = None
        self._candidate: Optional[EdgeModel] = None
        # A candidate left by a process that stopped mid-trial: its trial is lost, so it
        # is dropped; the version, offered again, is staged and tried anew.
        if self._link("candidate").is_symlink():
            self._link("candidate").unlink()
        if self._link("current").exists():
            try:
                self._current = self._load_current()
            except SignatureError as exc:
                logger.warning(f"model store {str(self.root)!r} starts with no model: {exc}")

    def _load(self, path: Path) -> EdgeModel:
        return EdgeModel.load(path, num_threads=self.num_threads, public_key=self.public_key,
                              allow_unsigned=self.allow_unsigned)

    def _load_current(self) -> EdgeModel:
        """The current version, or, when it no longer loads (a corrupt file on disk), the
        previous one, which then becomes current: a device keeps serving while it has a
        good version."""
        try:
            return self._load(self._link("current"))
        except NeoEdgeError as exc:
            previous = self.previous_path
            if previous is None or previous == self.current_path:
                error = SignatureError if isinstance(exc, SignatureError) else ArtifactError
                raise error(f"model store {str(self.root)!r}: the current version does "
                            f"not load and there is no previous one: {exc}") from exc
            try:
                model = self._load(previous)
            except NeoEdgeError as again:
                error = SignatureError if isinstance(exc, SignatureError) and isinstance(
                    again, SignatureError) else ArtifactError
                raise error(f"model store {str(self.root)!r}: neither the current "
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
        with self._lock:
            dest, model = self._bring_in(Path(artifact_dir), smoke_input)
            if model is self._current:
                return model
            if model is self._candidate:  # installed outright while on trial: no longer one
                self._link("candidate").unlink()
                self._candidate = None
            old = self.current_path
            if old is not None:
                self._point("previous", old)
            self._point("current", dest)
            self._current = model
            self._prune()
            return model

    def version_name(self, artifact_dir: str | os.PathLike) -> str:
        """``<version>-<digest12>``: the store's name of the artifact at ``artifact_dir`` (its
        folder under ``versions/``), read from the manifest without loading anything."""
        src = Path(artifact_dir)
        version = artifact.read_manifest(src)["model"].get("version")
        if not isinstance(version, str) or not _VERSION.match(version):
            raise ArtifactError(f"model version must be letters, digits, '.', '_', '+' or "
                                f"'-' (starting with a letter or digit, at most 128); got "
                                f"{version!r}")
        return f"{version}-{artifact.artifact_digest(src)[:12]}"

    def _bring_in(self, src: Path, smoke_input) -> tuple:
        """Copy, verify, smoke-test and load the artifact at ``src`` into ``versions/``;
        ``(folder, model)``. The current model itself when it is that version already."""
        links = [str(p.relative_to(src)) for p in sorted(src.rglob("*")) if p.is_symlink()]
        if links:
            raise ArtifactError(f"an artifact folder must hold plain files only, not links "
                                f"(which may point out of it); got {', '.join(links)}")
        artifact.verify(src, public_key=self.public_key, allow_unsigned=self.allow_unsigned)
        name = self.version_name(src)
        dest = self.root / "versions" / name
        if self._current is not None and self.current_path == dest.resolve():
            return dest, self._current
        if self._candidate is not None and self.candidate_path == dest.resolve():
            return dest, self._candidate
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=self.root / "versions"))
        try:
            shutil.copytree(src, staging, dirs_exist_ok=True)
            # The copy is what the smoke test loads: checked again, as it is now.
            artifact.verify(staging, public_key=self.public_key,
                            allow_unsigned=self.allow_unsigned)
            _smoke_in_subprocess(staging, smoke_input)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(staging, dest)
            model = self._load(dest)
        except NeoEdgeError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ArtifactError(f"new model version {name} was not installed, "
                                f"the current one keeps serving: {exc}") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest, model

    # -- a candidate version beside the current one (shadow trials) -------------------

    @property
    def candidate(self) -> Optional[EdgeModel]:
        """The version staged beside the current one (:meth:`stage`), or ``None``."""
        return self._candidate

    @property
    def candidate_path(self) -> Optional[Path]:
        link = self._link("candidate")
        return link.resolve() if link.exists() else None

    def stage(self, artifact_dir: str | os.PathLike,
              smoke_input: Optional[Mapping[str, np.ndarray]] = None) -> Optional[EdgeModel]:
        """Install the artifact at ``artifact_dir`` as the *candidate*, leaving ``current``
        as it is: the same checks as :meth:`install` (copy, signature, sha256, smoke
        inference in a subprocess), then :meth:`promote` or :meth:`reject` decides.

        Returns the candidate, or ``None`` when that version is the current one already
        (nothing to try). A candidate staged before is replaced (and removed). A version
        refused on this device before (:meth:`reject`, or rolled back after a promotion:
        see :meth:`refusal`) raises :class:`ArtifactError` without being copied: a
        redeployment of the same bad version does not serve it again.
        """
        src = Path(artifact_dir)
        with self._lock:
            name = self.version_name(src)
            reason = self.refusal(name)
            if reason is not None:
                raise ArtifactError(f"model version {name} was refused on this device before "
                                    f"({reason}); the current one keeps serving")
            if self._candidate is not None and self.candidate_path == (
                    self.root / "versions" / name).resolve():
                return self._candidate
            dest, model = self._bring_in(src, smoke_input)
            if model is self._current:
                return None
            self._drop_candidate()
            self._point("candidate", dest)
            self._candidate = model
            return model

    def promote(self) -> EdgeModel:
        """Make the candidate current (the current one becomes previous, for
        :meth:`rollback`)."""
        with self._lock:
            if self._candidate is None:
                raise ArtifactError(f"model store {str(self.root)!r} has no candidate to promote")
            dest, model = self.candidate_path, self._candidate
            old = self.current_path
            if old is not None:
                self._point("previous", old)
            self._point("current", dest)
            self._link("candidate").unlink()
            self._current, self._candidate = model, None
            self._prune()
            return model

    def reject(self, reason: str = "rejected") -> None:
        """Remove the candidate (the current one keeps serving) and remember its version as
        refused for ``reason`` (:meth:`refusal`)."""
        with self._lock:
            path = self.candidate_path
            if path is None:
                raise ArtifactError(f"model store {str(self.root)!r} has no candidate to reject")
            self.refuse(path.name, reason)
            self._drop_candidate()
            self._prune()

    def _drop_candidate(self) -> None:
        model, self._candidate = self._candidate, None
        link = self._link("candidate")
        if link.is_symlink():
            link.unlink()
        if model is not None:
            model.close()

    def refuse(self, name: str, reason: str) -> None:
        """Remember version ``name`` (``<version>-<digest12>``) as refused on this device."""
        with self._lock:
            refused = self._refused()
            refused[name] = str(reason)[:500]
            # The newest 100 are kept: enough to remember every recent bad version.
            kept = dict(list(refused.items())[-100:])
            tmp = self.root / ".refused.json.tmp"
            tmp.write_text(json.dumps(kept, indent=1, sort_keys=False))
            os.replace(tmp, self.root / "refused.json")

    def refusal(self, name: str) -> Optional[str]:
        """Why version ``name`` was refused on this device, or ``None``."""
        return self._refused().get(name)

    def _refused(self) -> dict:
        try:
            data = json.loads((self.root / "refused.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def rollback(self) -> EdgeModel:
        """Make the previous version current again (and the current one previous)."""
        with self._lock:
            prev, cur = self.previous_path, self.current_path
            if prev is None:
                raise ArtifactError(f"model store {str(self.root)!r} has no previous version "
                                    "to roll back to")
            model = self._load(prev)
            self._point("current", prev)
            if cur is not None:
                self._point("previous", cur)
            self._current = model
            return model

    def _prune(self) -> None:
        keep = {p for p in (self.current_path, self.previous_path, self.candidate_path)
                if p is not None}
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
