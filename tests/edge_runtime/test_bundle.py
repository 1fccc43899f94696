"""The device bundle: small, deterministic, and enough to run a model with no compiler."""

from __future__ import annotations

import importlib.util
import glob
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

import neo_edge_runtime
from neo_edge_runtime.compile import bundle as bundle_module
from neo_edge_runtime.compile.bundle import (APACHE_TVM_FFI_VERSION, APACHE_TVM_VERSION,
                                             DEVICE_PYTHONS, DEVICE_REQUIREMENTS, BundleError,
                                             build_bundle, bundle_files,
                                             device_requirements_for,
                                             device_requirements_text,
                                             download_device_wheels, handler_path,
                                             installed_size)
from neo_edge_runtime.targets import host_arch

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(neo_edge_runtime.__file__).resolve().parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle("x86_64", tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def device(bundle, tmp_path_factory):
    """The bundle unpacked as a device unpacks it."""
    folder = tmp_path_factory.mktemp("device")
    zipfile.ZipFile(bundle).extractall(folder)
    return folder


@pytest.fixture(scope="module")
def device_python(tmp_path_factory):
    """An interpreter with numpy and nothing else: a venv without pip, numpy linked in."""
    venv = tmp_path_factory.mktemp("device-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    numpy_dir = Path(importlib.util.find_spec("numpy").origin).parent
    for d in [numpy_dir] + list(numpy_dir.parent.glob("numpy.libs")):
        os.symlink(d, site / d.name)
    return venv / "bin" / "python"


def run_on_device(device_python, device, code, cwd):
    """Run ``code`` in ``device_python`` with only the unpacked bundle on the path."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(device), "PYTHONNOUSERSITE": "1"}
    return subprocess.run([str(device_python), "-c", code], capture_output=True, text=True,
                          env=env, cwd=cwd)


def test_bundle_has_the_runtime_and_no_compiler(bundle):
    names = zipfile.ZipFile(bundle).namelist()
    assert "neo_edge_runtime/_lib/libtvm_runtime.so" in names
    assert "neo_edge_runtime/_lib/libtvm_ffi.so" in names
    assert "edge_inference.py" in names
    # No compiler, and no Python bindings: the runtime calls the C ABI.
    assert not [n for n in names if "compiler" in n or n.startswith(("tvm/", "tvm_ffi/"))]


def test_bundle_is_under_a_tenth_of_onnxruntime():
    ort_dir = Path(importlib.util.find_spec("onnxruntime").origin).parent
    ort_size = sum(f.stat().st_size for f in ort_dir.rglob("*") if f.is_file())
    ours = installed_size(bundle_files("x86_64"))
    assert ours * 10 <= ort_size, f"bundle {ours / 1e6:.1f} MB vs onnxruntime {ort_size / 1e6:.1f} MB"


def test_bundle_is_byte_identical_when_rebuilt(bundle, tmp_path):
    again = build_bundle("x86_64", tmp_path)
    assert again.read_bytes() == bundle.read_bytes()


def test_bundle_python_files_are_the_top_level_modules_of_the_package(bundle):
    """The package without its build side: every module at the package top, nothing from
    ``compile/``."""
    names = zipfile.ZipFile(bundle).namelist()
    bundled = sorted(n for n in names if n.startswith("neo_edge_runtime/") and n.endswith(".py"))
    top_level = sorted(f"neo_edge_runtime/{p.name}" for p in PACKAGE_DIR.glob("*.py"))
    assert bundled == top_level
    assert "neo_edge_runtime/runtime.py" in bundled and "neo_edge_runtime/store.py" in bundled
    assert not [n for n in names if n.startswith("neo_edge_runtime/compile/")]


def test_every_module_of_the_bundle_imports_with_only_numpy(device, device_python, tmp_path):
    modules = sorted(f"neo_edge_runtime.{p.stem}"
                     for p in (device / "neo_edge_runtime").glob("*.py") if p.stem != "__init__")
    code = textwrap.dedent(f"""
        import importlib, sys
        for package in ("tvm", "tvm_ffi", "onnx"):
            try:
                __import__(package)
            except ImportError:
                pass
            else:
                sys.exit(f"the {{package}} package is importable in the device venv")
        import neo_edge_runtime
        for name in {modules!r}:
            module = importlib.import_module(name)
            assert module.__file__.startswith({str(device)!r}), module.__file__
        print(len({modules!r}))
    """)
    out = run_on_device(device_python, device, code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(len(modules)) and "neo_edge_runtime.runtime" in modules


def test_a_fresh_venv_with_only_the_bundle_and_numpy_runs_a_model(device, device_python,
                                                                  host_artifact, tmp_path):
    """No tvm package at all: the bundle alone loads and runs the compiled model."""
    from neo_edge_runtime import EdgeModel

    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = EdgeModel.load(host_artifact).predict(x)["output"]
    np.save(tmp_path / "expected.npy", expected)

    code = textwrap.dedent(f"""
        import sys, numpy as np
        for package in ("tvm", "tvm_ffi"):
            try:
                __import__(package)
            except ImportError:
                pass
            else:
                sys.exit(f"the {{package}} package is importable in the device venv")
        from neo_edge_runtime import EdgeModel
        m = EdgeModel.load({str(host_artifact)!r}, num_threads=1)
        got = m.predict(np.load({str(tmp_path / 'x.npy')!r}))["output"]
        np.testing.assert_allclose(got, np.load({str(tmp_path / 'expected.npy')!r}), rtol=0,
                                   atol=0)
        assert "libtvm_compiler" not in open("/proc/self/maps").read()
        print("ok", m.name)
    """)
    out = run_on_device(device_python, device, code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok ops"


def test_bundle_handler_is_the_one_the_construct_library_ships(bundle):
    shipped = REPO_ROOT / "lambda" / "edge_inference" / "edge_inference.py"
    assert zipfile.ZipFile(bundle).read("edge_inference.py") == shipped.read_bytes()


def test_the_bundle_builder_imports_neither_the_constructs_nor_tvm():
    """A machine with the construct library alone builds bundles: finding the handler
    imports no aws-cdk, and the builder no numpy or TVM."""
    code = ("import sys; from neo_edge_runtime.compile.bundle import handler_path; "
            "print(handler_path()); "
            "loaded = {'neo_edge', 'aws_cdk', 'numpy', 'tvm', 'tvm_ffi'} & set(sys.modules); "
            "assert not loaded, sorted(loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == \
        (REPO_ROOT / "lambda" / "edge_inference" / "edge_inference.py").resolve()


def test_fails_when_the_construct_library_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "neo_edge", None)  # find_spec then finds nothing
    with pytest.raises(BundleError, match=r"needs the on-device handler edge_inference.py, "
                                          r"which the construct library ships, and neo_edge "
                                          r"is not installed"):
        handler_path()


def test_pinned_versions_are_pyproject_pins():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = dict(r.split("==", 1) for r in requirements
                if r.split("==")[0] in ("apache-tvm", "apache-tvm-ffi"))
    assert pins == {"apache-tvm": APACHE_TVM_VERSION, "apache-tvm-ffi": APACHE_TVM_FFI_VERSION}


def _without_tvm(monkeypatch):
    for module in ("tvm", "tvm_ffi"):
        monkeypatch.setitem(sys.modules, module, None)  # not importable, as find_spec sees it


def test_without_tvm_installed_the_host_bundle_comes_from_cached_wheels(monkeypatch, tmp_path):
    """No apache-tvm on this machine: the host's libraries come from its wheels, as another
    architecture's do (a cache filled by an earlier download: nothing is downloaded)."""
    _without_tvm(monkeypatch)
    monkeypatch.setattr(bundle_module, "_strip", lambda data, arch: data)
    arch = host_arch()
    cached = tmp_path / arch
    (cached / "wheels").mkdir(parents=True)
    for name in (f"apache_tvm-{APACHE_TVM_VERSION}-py3-none-any.whl",
                 f"apache_tvm_ffi-{APACHE_TVM_FFI_VERSION}-cp311-cp311-any.whl"):
        (cached / "wheels" / name).write_bytes(b"")
    for lib in ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so"):
        (cached / "site" / lib).parent.mkdir(parents=True, exist_ok=True)
        (cached / "site" / lib).write_bytes(f"cached {lib}".encode())
    files = bundle_files(arch, cache=tmp_path)
    assert files["neo_edge_runtime/_lib/libtvm_runtime.so"] == b"cached tvm/lib/libtvm_runtime.so"
    assert files["neo_edge_runtime/_lib/libtvm_ffi.so"] == b"cached tvm_ffi/lib/libtvm_ffi.so"


def test_without_tvm_installed_the_host_wheels_are_downloaded_at_the_pins(monkeypatch,
                                                                          tmp_path):
    _without_tvm(monkeypatch)
    calls = []

    def no_network(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network in this test")

    monkeypatch.setattr(bundle_module.subprocess, "run", no_network)
    arch = host_arch()
    with pytest.raises(BundleError, match=rf"could not download the {arch} wheels of "
                                          rf"apache-tvm=={APACHE_TVM_VERSION}, "
                                          rf"apache-tvm-ffi=={APACHE_TVM_FFI_VERSION}: "
                                          r"\['ERROR: no network in this test'\]"):
        bundle_files(arch, cache=tmp_path)
    pip, = calls
    assert pip[1:4] == ["-m", "pip", "download"]
    assert pip[pip.index("--platform") + 1] == bundle_module.WHEEL_PLATFORMS[arch]
    assert "--only-binary=:all:" in pip


def test_a_cache_of_other_versions_is_replaced(monkeypatch, tmp_path):
    """Wheels cached for other pins are not used: the pinned ones are fetched again."""
    _without_tvm(monkeypatch)
    arch = host_arch()
    stale = tmp_path / arch
    (stale / "wheels").mkdir(parents=True)
    (stale / "wheels" / "apache_tvm-0.1.0-py3-none-any.whl").write_bytes(b"")
    (stale / "wheels" / "apache_tvm_ffi-0.0.1-cp311-cp311-any.whl").write_bytes(b"")
    for lib in ("tvm/lib", "tvm_ffi/lib"):
        (stale / "site" / lib).mkdir(parents=True)
    calls = []
    monkeypatch.setattr(bundle_module.subprocess, "run", lambda cmd, **kwargs: (
        calls.append(cmd), subprocess.CompletedProcess(cmd, 1, "", "offline"))[1])
    with pytest.raises(BundleError, match="could not download"):
        bundle_files(arch, cache=tmp_path)
    assert len(calls) == 1
    assert not list((stale / "wheels").glob("*.whl"))



# --- the device requirements ------------------------------------------------------------


def test_the_bundle_carries_the_pinned_device_requirements(bundle):
    text = zipfile.ZipFile(bundle).read("requirements-device.txt").decode()
    assert text == device_requirements_text()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [r.line() for r in DEVICE_REQUIREMENTS]
    assert 'numpy==2.2.6; python_version >= "3.10" and python_version < "3.11"' in lines


@pytest.mark.parametrize("python", DEVICE_PYTHONS + ("3.9", "3.13"))
def test_each_device_python_gets_one_pin_of_each_package(python):
    from packaging.requirements import Requirement

    chosen = [Requirement(line) for line in device_requirements_text().splitlines()
              if line and not line.startswith("#")]
    chosen = [f"{r.name}{r.specifier}" for r in chosen
              if r.marker is None or r.marker.evaluate({"python_version": python})]
    assert chosen == device_requirements_for(python)
    assert sorted(c.split("==")[0] for c in chosen) == ["awscrt", "awsiotsdk", "numpy"]


def test_device_wheels_are_downloaded_for_each_python_at_its_pins(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(bundle_module.subprocess, "run", lambda cmd, **kwargs: (
        calls.append(cmd), subprocess.CompletedProcess(cmd, 0, "", ""))[1])
    assert download_device_wheels("aarch64", tmp_path / "w", ("3.8", "3.12")) == tmp_path / "w"
    assert [c[c.index("--python-version") + 1] for c in calls] == ["3.8", "3.12"]
    assert calls[0][-3:] == ["numpy==1.24.4", "awsiotsdk==1.29.0", "awscrt==0.32.1"]
    assert calls[1][-3:] == ["numpy==2.4.6", "awsiotsdk==1.29.0", "awscrt==0.32.1"]
    assert [c[i + 1] for c in calls[:1] for i, w in enumerate(c) if w == "--platform"] == [
        "manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert calls[0][calls[0].index("-d") + 1] == str(tmp_path / "w")


def test_fails_when_device_wheels_cannot_be_downloaded(monkeypatch, tmp_path):
    monkeypatch.setattr(bundle_module.subprocess, "run", lambda cmd, **kwargs:
                        subprocess.CompletedProcess(cmd, 1, "", "ERROR: offline"))
    with pytest.raises(BundleError, match=r"could not download the x86_64 wheels of "
                                          r"numpy==1\.24\.4, awsiotsdk==1\.29\.0, "
                                          r"awscrt==0\.32\.1 for Python 3\.8: "
                                          r"\['ERROR: offline'\]"):
        download_device_wheels("x86_64", tmp_path, ("3.8",))


def test_fails_when_device_wheels_are_asked_for_32_bit_arm(tmp_path):
    with pytest.raises(BundleError, match="no device wheels for 'armv7l': the device "
                                          "requirements have wheels for x86_64, aarch64 only"):
        download_device_wheels("armv7l", tmp_path)


def _device_interpreter(python: str):
    """The newest pyenv (or PATH) interpreter of version ``python``, or None."""
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{python}.*/bin/python{python}")),
                   key=lambda p: [int(n) for n in p.split("/versions/")[1].split("/")[0]
                                  .split(".") if n.isdigit()])
    return found[-1] if found else shutil.which(f"python{python}")


@pytest.mark.parametrize("python", DEVICE_PYTHONS)
def test_every_module_of_the_bundle_compiles_on_each_device_python(python, device, tmp_path):
    interpreter = _device_interpreter(python)
    if interpreter is None:
        pytest.skip(f"python{python} is not installed (~/.pyenv/versions/{python}.*, PATH)")
    sources = sorted(str(p) for p in device.rglob("*.py"))
    assert str(device / "edge_inference.py") in sources and len(sources) > 5
    out = subprocess.run([interpreter, "-m", "py_compile", *sources], capture_output=True,
                         text=True, env={"PYTHONPYCACHEPREFIX": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / str(device).lstrip("/")).rglob("*.pyc"))) == len(sources)


@pytest.mark.slow
@pytest.mark.parametrize("python", DEVICE_PYTHONS)
def test_the_bundle_runs_a_model_on_each_device_python(python, device, host_artifact, tmp_path):
    """What the component's install step does on a device with this Python: a venv with the
    bundle's requirements-device.txt (from the package index), then the bundle's modules
    compiled, imported and run there, and the IPC client importable."""
    interpreter = _device_interpreter(python)
    if interpreter is None:
        pytest.skip(f"python{python} is not installed (~/.pyenv/versions/{python}.*, PATH)")
    venv = tmp_path / "venv"
    # A venv without pip of its own (ensurepip takes ~10 s); this pip installs into it for
    # that interpreter (--python: markers evaluated there, as on the device).
    subprocess.run([interpreter, "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True)
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python3"), "install",
         "--quiet", "--disable-pip-version-check", "--no-input", "--only-binary=:all:",
         "-r", str(device / "requirements-device.txt")], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr

    from neo_edge_runtime import EdgeModel

    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", EdgeModel.load(host_artifact).predict(x)["output"])
    code = textwrap.dedent(f"""
        import compileall, importlib, importlib.metadata, sys
        assert sys.version_info[:2] == {tuple(int(n) for n in python.split("."))!r}, sys.version
        # every module of the bundle compiles on this Python (into PYTHONPYCACHEPREFIX)
        if not compileall.compile_dir({str(device)!r}, quiet=1, force=True):
            sys.exit("a module of the bundle does not compile")
        import numpy as np
        import awsiot.greengrasscoreipc.clientv2
        import edge_inference
        from neo_edge_runtime import EdgeModel
        for name in ("artifact", "errors", "runtime", "store", "targets", "_ffi"):
            importlib.import_module("neo_edge_runtime." + name)
        m = EdgeModel.load({str(host_artifact)!r}, num_threads=1)
        got = m.predict(np.load({str(tmp_path / 'x.npy')!r}))["output"]
        np.testing.assert_allclose(got, np.load({str(tmp_path / 'expected.npy')!r}), rtol=0,
                                   atol=0)
        print("ok", np.__version__, importlib.metadata.version("awscrt"))
    """)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(device), "PYTHONNOUSERSITE": "1",
           "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache")}
    out = subprocess.run([str(venv / "bin" / "python3"), "-c", code], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    numpy_pin = next(p for p in device_requirements_for(python) if p.startswith("numpy=="))
    assert out.stdout.split() == ["ok", numpy_pin.split("==")[1], "0.32.1"]


@pytest.mark.slow
def test_the_install_step_installs_offline_from_the_downloaded_wheels(device, host_artifact,
                                                                      tmp_path):
    """The component's install step with shipped wheels: a venv made by a bare python3,
    filled from the wheels folder alone (the package index is unreachable)."""
    from neo_edge_runtime.compile import recipe

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    art = tmp_path / "artifacts"
    download_device_wheels(host_arch(), art / "wheels", (python,))
    shutil.copytree(device, art / "bundle", symlinks=True)
    shutil.copytree(host_artifact, art / "model")
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    work = tmp_path / "work"
    work.mkdir()
    script = (recipe.install_script("{artifacts:decompressedPath}/wheels")
              .replace("{artifacts:path}", str(tmp_path / "none"))
              .replace("{artifacts:decompressedPath}", str(art)))
    env = {"PATH": f"{bare / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "PIP_INDEX_URL": "http://127.0.0.1:9/unreachable", "PIP_NO_CACHE_DIR": "1"}
    out = subprocess.run(["sh", "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    check = subprocess.run(
        [str(work / "venv" / "bin" / "python3"), "-c",
         "import sys, numpy, awsiot.greengrasscoreipc.clientv2; print(sys.prefix, numpy.__version__)"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert check.returncode == 0, check.stderr
    numpy_pin = next(p for p in device_requirements_for(python) if p.startswith("numpy=="))
    assert check.stdout.split() == [str(work / "venv"), numpy_pin.split("==")[1]]
