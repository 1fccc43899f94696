"""The artifact folder format: a compiled library, optional params, and ``manifest.json``.

Pure Python (no TVM): the compiler writes artifacts, the runtime verifies them, and the
constructs and Lambdas read manifests, all through this module.

``manifest.json`` (format version 1)::

    {
      "format_version": 1,
      "model": {"name": "digits", "version": "1.0.0"},
      "framework": "ONNX",
      "source_sha256": "...",
      "target": {"name": "rasp4b", "arch": "aarch64", "device": "cpu", "tvm_target": {...}},
      "library": "model.so",
      "params": "params.bin" | null,
      "inputs":  [{"name": "input", "shape": [1, 64], "dtype": "float32"}],
      "outputs": [{"name": "probabilities", "shape": [1, 10], "dtype": "float32"}],
      "files": {"model.so": "<sha256>", "params.bin": "<sha256>"},
      "tvm_version": "0.27.0.post1",
      "compile_options": {...},
      "optimizations": {"skipped": [{"pass": "convert_layout", "reason": "..."}]},
      "metadata": {...}
    }

``optimizations`` is there only when some of the compiler's optimizing passes failed
and were skipped (the model then runs correctly, more slowly).

Nothing in it depends on when or where it was built, so the same inputs give the same
bytes: a Greengrass component version is derived from it.

``manifest.json.sig``, when there, is a detached ECDSA P-256 / SHA-256 signature of the
manifest's bytes (:mod:`.signature`): with it the hashes above prove where the files come
from, not only that they are whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from . import signature
from .errors import ArtifactError
from .signature import PublicKeyLike

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
PARAMS = "params.bin"

_REQUIRED = ("format_version", "model", "framework", "target", "library", "inputs",
             "outputs", "files")
#: Tensor element types a manifest may declare (numpy's names).
DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64")
#: The most elements one input or output may declare (what a device allocates for it).
MAX_ELEMENTS = 1 << 31
_SHA256 = frozenset("0123456789abcdef")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def dumps_manifest(manifest: Mapping[str, Any]) -> str:
    """Canonical JSON: sorted keys, two-space indent, trailing newline."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def write_manifest(folder: str | os.PathLike, manifest: dict) -> Path:
    """Fill in ``files`` with the sha256 of every listed file and write ``manifest.json``."""
    folder = Path(folder)
    names = [manifest["library"]] + ([manifest["params"]] if manifest.get("params") else [])
    manifest["files"] = {n: sha256_file(folder / n) for n in sorted(names)}
    path = folder / MANIFEST
    path.write_text(dumps_manifest(manifest))
    return path


def read_manifest(folder: str | os.PathLike, *, data: Optional[bytes] = None) -> dict:
    """Read and structurally check ``manifest.json`` (does not hash the files).

    ``data``: the manifest's bytes, already read (and their signature checked), instead
    of the file's.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder {str(folder)!r} does not exist")
    path = folder / MANIFEST
    if data is None and not path.is_file():
        raise ArtifactError(f"{str(folder)!r} is not an artifact folder: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_bytes() if data is None else data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} must hold a JSON object")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {manifest['format_version']!r}; "
                            f"this runtime reads format_version {FORMAT_VERSION}")
    _check_structure(path, manifest)
    for name in [manifest["library"]] + ([manifest["params"]] if manifest.get("params") else []):
        if name not in manifest["files"]:
            raise ArtifactError(f"{path} does not list a sha256 for {name!r}")
    return manifest


def _check_structure(path: Path, manifest: dict) -> None:
    """The types of what a runtime reads from a manifest, so that a malformed one is an
    :class:`ArtifactError` naming the field, never a ``TypeError`` deep in the loader."""
    def fail(field: str, expected: str) -> None:
        raise ArtifactError(f"{path}: {field} must be {expected}; got {_short(value)}")

    value = manifest["model"]
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) and value.get(k)
                                              for k in ("name", "version")):
        fail("model", "an object with name and version strings")
    value = manifest["target"]
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) and value.get(k)
                                              for k in ("name", "arch")) \
            or not isinstance(value.get("device", "cpu"), str):
        fail("target", "an object with name, arch (and device) strings")
    for field in ("library", "params"):
        value = manifest.get(field)
        if field == "params" and value is None:
            continue
        if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
            fail(field, "the name of a file in the artifact folder")
    value = manifest["files"]
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 and set(v) <= _SHA256
            for k, v in value.items()):
        fail("files", "an object of file name to sha256 (64 lowercase hex digits)")
    for field in ("inputs", "outputs"):
        value = manifest[field]
        if not isinstance(value, list) or (field == "outputs" and not value):
            fail(field, "a list of tensors" if field == "inputs" else "a non-empty list of tensors")
        for i, tensor in enumerate(value):
            value = tensor
            if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str) \
                    or tensor.get("dtype") not in DTYPES:
                fail(f"{field}[{i}]", f"an object with a name and a dtype among {', '.join(DTYPES)}")
            shape = tensor.get("shape")
            if not isinstance(shape, list) or not all(
                    type(d) is int and 0 <= d < MAX_ELEMENTS for d in shape):
                fail(f"{field}[{i}].shape", "a list of non-negative integers")
            elements = 1
            for d in shape:
                elements *= d
            if elements > MAX_ELEMENTS:
                fail(f"{field}[{i}].shape", f"at most {MAX_ELEMENTS} elements")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def verify(folder: str | os.PathLike, *, public_key: Optional[PublicKeyLike] = None,
           allow_unsigned: bool = False) -> dict:
    """Check the manifest's signature, read the manifest, and check the sha256 of every
    file it lists.

    Returns the manifest. Raises :class:`ArtifactError` naming the first missing,
    truncated or changed file; nothing is loaded before this passes.

    Parameters
    ----------
    public_key:
        The key ``manifest.json.sig`` must verify with (PEM text, base64 DER, a PEM file
        or a :class:`~neo_edge_runtime.signature.PublicKey`): a mis-signed artifact raises
        :class:`~neo_edge_runtime.errors.SignatureError`, and so does an unsigned one
        unless ``allow_unsigned``. Default: no signature is checked (integrity only).
    allow_unsigned:
        With ``public_key``, accept an artifact that has no signature at all (a signed
        one must still verify).
    """
    folder = Path(folder)
    data = None
    if public_key is not None:
        if not folder.is_dir():
            raise ArtifactError(f"artifact folder {str(folder)!r} does not exist")
        data = signature.read_verified_manifest(
            folder, signature.load_public_key(public_key), allow_unsigned=allow_unsigned)
    manifest = read_manifest(folder, data=data)
    for name, digest in sorted(manifest["files"].items()):
        if os.path.isabs(name) or ".." in Path(name).parts:
            raise ArtifactError(f"manifest lists {name!r}, which is outside the artifact folder")
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"artifact {str(folder)!r} is missing {name!r}")
        actual = sha256_file(path)
        if actual != digest:
            raise ArtifactError(f"artifact file {name!r} in {str(folder)!r} does not match its "
                                f"manifest (sha256 {actual[:12]}..., expected {digest[:12]}...): "
                                "it was changed or truncated after compilation")
    return manifest


def artifact_digest(folder: str | os.PathLike) -> str:
    """sha256 of the canonical manifest: one value that changes iff the artifact does."""
    return hashlib.sha256(dumps_manifest(read_manifest(folder)).encode()).hexdigest()
