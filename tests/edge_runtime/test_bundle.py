"""The device bundle: small, deterministic, and enough to run a model with no compiler."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from neo_edge_runtime.bundle import build_bundle, bundle_files, installed_size


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle("x86_64", tmp_path_factory.mktemp("bundle"))


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


def test_a_fresh_venv_with_only_the_bundle_and_numpy_runs_a_model(bundle, host_artifact,
                                                                  tmp_path):
    """No tvm package at all: the bundle alone loads and runs the compiled model."""
    from neo_edge_runtime import EdgeModel

    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = EdgeModel.load(host_artifact).predict(x)["output"]
    np.save(tmp_path / "expected.npy", expected)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    numpy_dir = Path(importlib.util.find_spec("numpy").origin).parent
    for d in [numpy_dir] + list(numpy_dir.parent.glob("numpy.libs")):
        os.symlink(d, site / d.name)
    device = tmp_path / "device"
    zipfile.ZipFile(bundle).extractall(device)
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
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(device), "PYTHONNOUSERSITE": "1"}
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok ops"
