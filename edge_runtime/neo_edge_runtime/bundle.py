"""The device bundle: everything a device needs to load and run a compiled model.

A zip whose root is a folder for ``PYTHONPATH``::

    edge_inference.py            the on-device handler (lambda/edge_inference)
    neo_edge_runtime/            this package, device modules only
    neo_edge_runtime/_lib/       libtvm_ffi.so, libtvm_runtime.so
                                 (+ libtvm_runtime_cuda.so for NVIDIA)

No compiler: the 259 MB ``libtvm_compiler.so`` is not in it, and no Python bindings
either: the runtime calls the two libraries through TVM-FFI's C ABI (``_ffi``). numpy is
a device prerequisite (as it is for ONNX Runtime), not part of the bundle. GPU artifacts
run through TVM's Python runtime, so an NVIDIA device also needs the ``apache-tvm``
wheel.

For the build machine's architecture the files come from the installed wheels; for
another architecture from that architecture's wheels of the same pinned versions
(``pip download --platform manylinux_2_28_aarch64 --only-binary=:all:``). Shared
libraries are stripped of symbols with the architecture's ``strip``. The zip is
deterministic: sorted entries, fixed timestamps.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from .errors import NeoEdgeError
from .targets import host_arch

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
HANDLER = REPO_ROOT / "lambda" / "edge_inference" / "edge_inference.py"

#: Modules of this package a device never needs (they import the compiler or onnx).
BUILD_ONLY = ("compiler.py", "xgboost_onnx.py", "zoo.py", "bench.py", "bundle.py")
#: manylinux platform tags per device architecture.
WHEEL_PLATFORMS = {"x86_64": "manylinux_2_28_x86_64", "aarch64": "manylinux_2_28_aarch64"}
STRIP = {"x86_64": "strip", "aarch64": "aarch64-linux-gnu-strip"}
_EPOCH = (1980, 1, 1, 0, 0, 0)


class BundleError(NeoEdgeError):
    """A device bundle that cannot be built for the architecture asked for."""


def _pinned(dist: str) -> str:
    return importlib.metadata.version(dist)


def _wheel_tree(arch: str, cache: Path) -> tuple[Path, Path]:
    """(tvm package dir, tvm_ffi package dir) for ``arch``."""
    if arch == host_arch():
        tvm_dir = Path(list(importlib.util.find_spec("tvm").submodule_search_locations)[0])
        ffi_dir = Path(list(importlib.util.find_spec("tvm_ffi").submodule_search_locations)[0])
        return tvm_dir, ffi_dir
    if arch not in WHEEL_PLATFORMS:
        raise BundleError(f"no device bundle for {arch!r}: apache-tvm publishes wheels for "
                          f"{', '.join(WHEEL_PLATFORMS)} only")
    dest = cache / arch
    unpacked = dest / "site"
    if not (unpacked / "tvm_ffi" / "lib").is_dir() or not (unpacked / "tvm").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        reqs = [f"apache-tvm=={_pinned('apache-tvm')}", f"apache-tvm-ffi=={_pinned('apache-tvm-ffi')}"]
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--platform", WHEEL_PLATFORMS[arch], "--python-version", "3.11",
             "--implementation", "cp", "-d", str(dest / "wheels"), *reqs],
            capture_output=True, text=True)
        if proc.returncode:
            raise BundleError(f"could not download the {arch} wheels of {', '.join(reqs)}: "
                              f"{proc.stderr.strip().splitlines()[-1:]}")
        for whl in sorted((dest / "wheels").glob("*.whl")):
            with zipfile.ZipFile(whl) as z:
                members = [m for m in z.namelist() if m.startswith(("tvm/lib/libtvm_runtime",
                                                                    "tvm_ffi/lib/"))]
                z.extractall(unpacked, members)
    return unpacked / "tvm", unpacked / "tvm_ffi"


def _strip(data: bytes, arch: str) -> bytes:
    tool = shutil.which(STRIP[arch])
    if tool is None:
        return data
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "lib.so"
        f.write_bytes(data)
        subprocess.run([tool, "--strip-unneeded", str(f)], check=True, capture_output=True)
        return f.read_bytes()


def bundle_files(arch: str, *, cuda: bool = False, cache: Optional[Path] = None) -> dict:
    """Map of path inside the bundle to bytes, for ``arch`` (and NVIDIA GPUs if ``cuda``)."""
    cache = cache or REPO_ROOT / "build" / "wheels"
    tvm_dir, ffi_dir = _wheel_tree(arch, cache)
    files: dict[str, bytes] = {}
    for f in sorted(PACKAGE_DIR.rglob("*")):
        rel = f.relative_to(PACKAGE_DIR).as_posix()
        if f.is_file() and "__pycache__" not in rel and rel not in BUILD_ONLY \
                and not rel.startswith("_lib/"):
            files[f"neo_edge_runtime/{rel}"] = f.read_bytes()
    libs = [ffi_dir / "lib" / "libtvm_ffi.so", tvm_dir / "lib" / "libtvm_runtime.so"]
    if cuda:
        libs.append(tvm_dir / "lib" / "libtvm_runtime_cuda.so")
    for src in libs:
        if not src.is_file():
            raise BundleError(f"{src} is missing from the {arch} wheels")
        files[f"neo_edge_runtime/_lib/{src.name}"] = _strip(src.read_bytes(), arch)
    files["edge_inference.py"] = HANDLER.read_bytes()
    return files


def build_bundle(arch: Optional[str] = None, output: str | os.PathLike = "build/bundle", *,
                 cuda: bool = False, cache: Optional[Path] = None) -> Path:
    """Write ``<output>/neo-edge-runtime-<arch>[-cuda].zip`` and return its path."""
    arch = arch or host_arch()
    files = bundle_files(arch, cuda=cuda, cache=cache)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"neo-edge-runtime-{arch}{'-cuda' if cuda else ''}.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            executable = name.endswith(".so")
            info.external_attr = (0o755 if executable else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, files[name])
    tmp = path.with_suffix(".zip.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def installed_size(files: dict) -> int:
    """Bytes the bundle takes once unpacked on a device."""
    return sum(len(v) for v in files.values())


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m neo_edge_runtime.bundle",
                                description="Build the device bundle of the edge runtime.")
    p.add_argument("--arch", action="append", help="x86_64, aarch64 (repeatable; default: this "
                                                   "machine's)")
    p.add_argument("--cuda", action="store_true", help="also include the CUDA runtime module")
    p.add_argument("--output", default="build/bundle")
    args = p.parse_args(argv)
    for arch in args.arch or [host_arch()]:
        path = build_bundle(arch, args.output, cuda=args.cuda)
        with zipfile.ZipFile(path) as z:
            size = sum(i.file_size for i in z.infolist())
        print(f"{path}  {path.stat().st_size / 1e6:.2f} MB zipped, {size / 1e6:.2f} MB installed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
