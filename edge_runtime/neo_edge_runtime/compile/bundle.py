"""The device bundle: everything a device needs to load and run a compiled model.

A zip whose root is a folder for ``PYTHONPATH``::

    edge_inference.py            the on-device handler (lambda/edge_inference, shipped
                                 by the construct library as neo_edge/_functions)
    requirements-device.txt      the Python packages the handler imports, pinned per
                                 device Python (:data:`DEVICE_REQUIREMENTS`)
    neo_edge_runtime/            the package without its build side (compile/)
    neo_edge_runtime/_lib/       libtvm_ffi.so, libtvm_runtime.so
                                 (+ libtvm_runtime_cuda.so for NVIDIA)

No compiler: the 259 MB ``libtvm_compiler.so`` is not in it, and no Python bindings
either: the runtime calls the two libraries through TVM-FFI's C ABI (``_ffi``). numpy and
the Greengrass IPC client (``awsiotsdk``) are device prerequisites, not part of the bundle:
the inference component's install step puts them in a virtual environment of its own from
``requirements-device.txt``, from the package index or from wheels shipped with the
component (:func:`download_device_wheels` fetches those). GPU artifacts run through TVM's
Python runtime, so an NVIDIA device also needs the ``apache-tvm`` wheel.

The runtime modules and the handler run on every Python of :data:`DEVICE_PYTHONS`.

The libraries are those of the pinned versions (:data:`APACHE_TVM_VERSION`,
:data:`APACHE_TVM_FFI_VERSION`). For the build machine's architecture they come from the
installed wheels when those are the pinned versions; otherwise, and for another
architecture, from that architecture's wheels (``pip download --platform
manylinux_2_28_aarch64 --only-binary=:all:``), kept in a cache folder. So a machine with
the construct library alone (no apache-tvm) builds every bundle::

    python -m neo_edge_runtime.compile.bundle --arch aarch64 --arch x86_64

The wheels of the device requirements, for a device that cannot reach the package index
(a folder to give ``EdgeInferenceComponent(device_wheels=...)``)::

    python -m neo_edge_runtime.compile.bundle --arch aarch64 --device-wheels build/device-wheels

Shared libraries are stripped of symbols with the architecture's ``strip``. The zip is
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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import NeoEdgeError
from ..targets import RUNTIME_ARCHES, host_arch

#: The ``neo_edge_runtime`` package folder.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: Folders of the package a device bundle leaves out: the build side (this subpackage)
#: and the libraries of the build machine (the bundle carries its own in ``_lib/``).
EXCLUDED = ("compile", "_lib")

#: The TVM runtime library and FFI a bundle carries: pyproject.toml's pins.
APACHE_TVM_VERSION = "0.27.0.post1"
APACHE_TVM_FFI_VERSION = "0.1.14.post1"
_PINS = (("apache-tvm", "tvm", APACHE_TVM_VERSION),
         ("apache-tvm-ffi", "tvm_ffi", APACHE_TVM_FFI_VERSION))
#: manylinux platform tags of apache-tvm's wheels, per device architecture the runtime has.
WHEEL_PLATFORMS = {arch: f"manylinux_2_28_{arch}" for arch in RUNTIME_ARCHES}

#: The Python versions of the devices the component supports: 3.8 (JetPack 5), 3.10
#: (JetPack 6, Ubuntu 22.04), 3.11 (Raspberry Pi OS 12), 3.12 (Ubuntu 24.04).
DEVICE_PYTHONS = ("3.8", "3.10", "3.11", "3.12")


@dataclass(frozen=True)
class DeviceRequirement:
    """One pinned package the on-device handler imports.

    Attributes
    ----------
    name, version:
        The distribution and its exact version.
    python_min, python_below:
        The Python versions (``"3.10"``) it is for: from ``python_min`` (inclusive) to
        ``python_below`` (exclusive). Default: no bound.
    """

    name: str
    version: str
    python_min: Optional[str] = None
    python_below: Optional[str] = None

    def marker(self) -> str:
        """The PEP 508 environment marker of the Python range, or ``""`` for any."""
        parts = []
        if self.python_min:
            parts.append(f'python_version >= "{self.python_min}"')
        if self.python_below:
            parts.append(f'python_version < "{self.python_below}"')
        return " and ".join(parts)

    def line(self) -> str:
        """The requirement as a line of a requirements file."""
        marker = self.marker()
        return f"{self.name}=={self.version}" + (f"; {marker}" if marker else "")

    def applies_to(self, python: str) -> bool:
        """Whether the requirement is for Python ``python`` (``"3.8"``)."""
        v = _python_tuple(python)
        return ((self.python_min is None or v >= _python_tuple(self.python_min))
                and (self.python_below is None or v < _python_tuple(self.python_below)))


#: What the on-device handler imports, pinned: numpy (the newest release for each device
#: Python: 1.24 is the last for 3.8 and 3.9, 2.2 for 3.10, 2.4 needs 3.11) and the
#: Greengrass IPC client (``awsiot.greengrasscoreipc``) with the ``awscrt`` release it pins.
#: awsiotsdk 1.29.0 is the newest whose ``awscrt`` has wheels for Python 3.8 on aarch64.
#: Every pin has manylinux wheels for x86_64 and aarch64 on every :data:`DEVICE_PYTHONS`.
DEVICE_REQUIREMENTS = (
    DeviceRequirement("numpy", "1.24.4", python_below="3.10"),
    DeviceRequirement("numpy", "2.2.6", python_min="3.10", python_below="3.11"),
    DeviceRequirement("numpy", "2.4.6", python_min="3.11"),
    DeviceRequirement("awsiotsdk", "1.29.0"),
    DeviceRequirement("awscrt", "0.32.1"),
)
#: The name of the requirements file at the root of the bundle.
DEVICE_REQUIREMENTS_FILE = "requirements-device.txt"
#: Platform tags a device's pip accepts, newest first, per architecture (the devices'
#: glibc is 2.31 or newer).
DEVICE_WHEEL_PLATFORMS = {arch: (f"manylinux_2_28_{arch}", f"manylinux_2_17_{arch}",
                                 f"manylinux2014_{arch}")
                          for arch in WHEEL_PLATFORMS}
STRIP = {"x86_64": "strip", "aarch64": "aarch64-linux-gnu-strip"}
#: Where downloaded wheels are kept unless a cache is given (relative to the current
#: directory, as the output folder is).
DEFAULT_CACHE = Path("build") / "wheels"
_EPOCH = (1980, 1, 1, 0, 0, 0)


class BundleError(NeoEdgeError):
    """A device bundle that cannot be built for the architecture asked for."""


def handler_path() -> Path:
    """The on-device handler ``edge_inference.py`` that the construct library ships
    (``neo_edge/_functions/edge_inference/``), found without importing ``neo_edge`` (which
    would import aws-cdk)."""
    spec = importlib.util.find_spec("neo_edge")
    if spec is None or not spec.submodule_search_locations:
        raise BundleError("the device bundle needs the on-device handler edge_inference.py, "
                          "which the construct library ships, and neo_edge is not installed "
                          f"for {sys.executable}: install the neo-edge package")
    path = (Path(list(spec.submodule_search_locations)[0]) / "_functions" / "edge_inference"
            / "edge_inference.py")
    if not path.is_file():
        raise BundleError(f"the on-device handler is missing from the construct library: "
                          f"{path} does not exist")
    return path


def _installed_tree() -> Optional[tuple[Path, Path]]:
    """(tvm package dir, tvm_ffi package dir) of the installed wheels, or None unless both
    are installed at the pinned versions."""
    dirs = []
    for dist, module, version in _PINS:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            return None
        try:
            if importlib.metadata.version(dist) != version:
                return None
        except importlib.metadata.PackageNotFoundError:
            return None
        dirs.append(Path(list(spec.submodule_search_locations)[0]))
    return dirs[0], dirs[1]


def _cached(dest: Path) -> bool:
    """Whether ``dest`` holds the pinned wheels for one architecture, unpacked."""
    wheels = [w.name for w in (dest / "wheels").glob("*.whl")]
    return ((dest / "site" / "tvm_ffi" / "lib").is_dir() and (dest / "site" / "tvm").is_dir()
            and all(any(w.startswith(f"{dist.replace('-', '_')}-{version}-") for w in wheels)
                    for dist, _, version in _PINS))


def _wheel_tree(arch: str, cache: Path) -> tuple[Path, Path]:
    """(tvm package dir, tvm_ffi package dir) for ``arch``."""
    if arch == host_arch():
        installed = _installed_tree()
        if installed is not None:
            return installed
    if arch not in WHEEL_PLATFORMS:
        raise BundleError(f"no device bundle for {arch!r}: apache-tvm publishes wheels for "
                          f"{', '.join(WHEEL_PLATFORMS)} only")
    dest = cache / arch
    unpacked = dest / "site"
    if not _cached(dest):
        for stale in (dest / "wheels", unpacked):
            shutil.rmtree(stale, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        reqs = [f"{dist}=={version}" for dist, _, version in _PINS]
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


def _python_tuple(python: str) -> tuple:
    return tuple(int(n) for n in str(python).split("."))


def device_requirements_text() -> str:
    """The text of ``requirements-device.txt``: :data:`DEVICE_REQUIREMENTS`, one a line."""
    header = ["# The Python packages the neo-edge inference component installs on a device",
              "# (into venv/ in its work folder), for Python " + ", ".join(DEVICE_PYTHONS) + "."]
    return "\n".join(header + [r.line() for r in DEVICE_REQUIREMENTS]) + "\n"


def device_requirements_for(python: str) -> list:
    """``name==version`` of every device requirement for Python ``python`` (``"3.8"``)."""
    return [f"{r.name}=={r.version}" for r in DEVICE_REQUIREMENTS if r.applies_to(python)]


def download_device_wheels(arch: str, dest: str | os.PathLike,
                           pythons: Sequence[str] = DEVICE_PYTHONS) -> Path:
    """Download the wheels of the device requirements for ``arch`` and each Python in
    ``pythons`` into the folder ``dest`` (created), and return it.

    The folder is what ``pip install --no-index --find-links`` takes: give it (or a zip
    of it, wheels at the root) to ``EdgeInferenceComponent(device_wheels=...)`` for
    devices that cannot reach the package index.

    Raises
    ------
    BundleError
        For an architecture without manylinux wheels, or when pip cannot download one.
    """
    if arch not in DEVICE_WHEEL_PLATFORMS:
        raise BundleError(f"no device wheels for {arch!r}: the device requirements have "
                          f"wheels for {', '.join(DEVICE_WHEEL_PLATFORMS)} only")
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    platforms = [a for tag in DEVICE_WHEEL_PLATFORMS[arch] for a in ("--platform", tag)]
    for python in pythons:
        reqs = device_requirements_for(python)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", *platforms, "--python-version", python,
             "--implementation", "cp", "-d", str(out), *reqs],
            capture_output=True, text=True)
        if proc.returncode:
            raise BundleError(f"could not download the {arch} wheels of {', '.join(reqs)} "
                              f"for Python {python}: {proc.stderr.strip().splitlines()[-1:]}")
    return out


def _strip(data: bytes, arch: str) -> bytes:
    tool = shutil.which(STRIP[arch])
    if tool is None:
        return data
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "lib.so"
        f.write_bytes(data)
        subprocess.run([tool, "--strip-unneeded", str(f)], check=True, capture_output=True)
        return f.read_bytes()


def package_files() -> dict[str, bytes]:
    """The device part of ``neo_edge_runtime``: every file of the package but the build
    side (``compile/``), ``_lib/`` and ``__pycache__``, keyed by its path in the bundle."""
    files = {}
    for f in sorted(PACKAGE_DIR.rglob("*")):
        parts = f.relative_to(PACKAGE_DIR).parts
        if f.is_file() and parts[0] not in EXCLUDED and "__pycache__" not in parts:
            files["/".join(("neo_edge_runtime", *parts))] = f.read_bytes()
    return files


def bundle_files(arch: str, *, cuda: bool = False, cache: Optional[Path] = None) -> dict:
    """Map of path inside the bundle to bytes, for ``arch`` (and NVIDIA GPUs if ``cuda``).

    ``cache``: where downloaded wheels are kept. Default: ``build/wheels`` in the current
    directory.
    """
    tvm_dir, ffi_dir = _wheel_tree(arch, Path(cache or DEFAULT_CACHE))
    files = package_files()
    libs = [ffi_dir / "lib" / "libtvm_ffi.so", tvm_dir / "lib" / "libtvm_runtime.so"]
    if cuda:
        libs.append(tvm_dir / "lib" / "libtvm_runtime_cuda.so")
    for src in libs:
        if not src.is_file():
            raise BundleError(f"{src} is missing from the {arch} wheels")
        files[f"neo_edge_runtime/_lib/{src.name}"] = _strip(src.read_bytes(), arch)
    files["edge_inference.py"] = handler_path().read_bytes()
    files[DEVICE_REQUIREMENTS_FILE] = device_requirements_text().encode()
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

    p = argparse.ArgumentParser(prog="python -m neo_edge_runtime.compile.bundle",
                                description="Build the device bundle of the edge runtime.")
    p.add_argument("--arch", action="append", help="x86_64, aarch64 (repeatable; default: this "
                                                   "machine's)")
    p.add_argument("--cuda", action="store_true", help="also include the CUDA runtime module")
    p.add_argument("--output", default="build/bundle")
    p.add_argument("--cache", default=str(DEFAULT_CACHE),
                   help="where downloaded wheels are kept (default: %(default)s)")
    p.add_argument("--device-wheels", metavar="FOLDER",
                   help="instead of bundles, download the wheels of the device requirements "
                        "into FOLDER/<arch> (for devices without access to the package index)")
    p.add_argument("--python", action="append",
                   help=f"with --device-wheels: a device Python version (repeatable; "
                        f"default: {', '.join(DEVICE_PYTHONS)})")
    args = p.parse_args(argv)
    if args.device_wheels:
        for arch in args.arch or [host_arch()]:
            folder = download_device_wheels(arch, Path(args.device_wheels) / arch,
                                            args.python or DEVICE_PYTHONS)
            wheels = sorted(w.name for w in folder.glob("*.whl"))
            print(f"{folder}  {len(wheels)} wheels")
        return 0
    for arch in args.arch or [host_arch()]:
        path = build_bundle(arch, args.output, cuda=args.cuda, cache=Path(args.cache))
        with zipfile.ZipFile(path) as z:
            size = sum(i.file_size for i in z.infolist())
        print(f"{path}  {path.stat().st_size / 1e6:.2f} MB zipped, {size / 1e6:.2f} MB installed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
