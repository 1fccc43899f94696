"""The aarch64 device bundle runs a rasp4b artifact, under qemu-user, as the host runs its own.

An aarch64 CPython 3.11 (Debian arm64 packages) and the aarch64 numpy wheel of the pinned
version run under ``qemu-aarch64`` with only the aarch64 bundle on ``PYTHONPATH``; the
rasp4b artifact's outputs must equal the host artifact's on the same input. The sysroot
comes from ``make qemu-sysroot`` (part of ``make setup``, scripts/qemu-aarch64-sysroot.sh).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import textwrap
import zipfile

import numpy as np
import pytest

from neo_edge_runtime import EdgeModel, artifact, compile_model
from neo_edge_runtime.compile.bundle import build_bundle

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
QEMU_DIR = REPO_ROOT / "build" / "qemu-aarch64"
SYSROOT = QEMU_DIR / "sysroot"

pytestmark = pytest.mark.skipif(
    not (QEMU_DIR / ".assembled").is_file(),
    reason="no aarch64 sysroot for qemu-user: run `make qemu-sysroot` (part of `make setup`)")

# Runs inside the emulated aarch64 interpreter; prints one JSON line.
GUEST = textwrap.dedent("""
    import json, platform, sys
    import numpy as np
    try:
        import tvm
        tvm_importable = True
    except ImportError:
        tvm_importable = False
    from neo_edge_runtime import EdgeModel

    artifact, x_path, out_path = sys.argv[1:]
    model = EdgeModel.load(artifact, num_threads=1)
    np.save(out_path, model.predict(np.load(x_path))["output"])
    maps = open("/proc/self/maps").read()
    print(json.dumps({
        "machine": platform.machine(),
        "numpy": np.__version__,
        "tvm_importable": tvm_importable,
        "libs": sorted({line.split()[-1] for line in maps.splitlines()
                        if "libtvm" in line or line.endswith("model.so")}),
    }))
""")


@pytest.fixture(scope="module")
def rasp4b_artifact(ops_onnx, tmp_path_factory):
    return compile_model(ops_onnx, "rasp4b", tmp_path_factory.mktemp("art") / "ops-rasp4b")


@pytest.fixture(scope="module")
def device_dir(tmp_path_factory):
    """The aarch64 bundle, built from this checkout and unpacked as a device would."""
    tmp = tmp_path_factory.mktemp("aarch64")
    device = tmp / "device"
    bundle = build_bundle("aarch64", tmp, cache=REPO_ROOT / "build" / "wheels")
    zipfile.ZipFile(bundle).extractall(device)
    return device


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(7).standard_normal((1, 3, 16, 16)).astype(np.float32)


def run_guest(artifact, device_dir, x, work):
    """Run ``artifact`` on ``x`` in the emulated aarch64 interpreter: GUEST's report, with
    the output added."""
    np.save(work / "x.npy", x)
    env = {"PATH": "/usr/bin:/bin", "PYTHONHOME": str(SYSROOT / "usr"),
           "PYTHONPATH": f"{device_dir}:{QEMU_DIR / 'site-packages'}",
           "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        ["qemu-aarch64", "-L", str(SYSROOT), str(SYSROOT / "usr" / "bin" / "python3.11"),
         "-c", GUEST, str(artifact), str(work / "x.npy"), str(work / "y.npy")],
        capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["output"] = np.load(work / "y.npy")
    return report


@pytest.fixture(scope="module")
def guest(rasp4b_artifact, device_dir, x, tmp_path_factory):
    """One run of the rasp4b artifact in the emulated aarch64 interpreter."""
    return run_guest(rasp4b_artifact, device_dir, x, tmp_path_factory.mktemp("guest"))


def test_rasp4b_artifact_under_qemu_gives_the_host_artifacts_outputs(guest, host_artifact, x):
    expected = EdgeModel.load(host_artifact).predict(x)["output"]
    assert guest["output"].shape == expected.shape
    np.testing.assert_allclose(guest["output"], expected, rtol=0, atol=1e-5)


def test_the_guest_is_aarch64_with_the_pinned_numpy(guest):
    assert guest["machine"] == "aarch64"
    assert guest["numpy"] == np.__version__


def test_the_guest_runs_the_bundles_libraries_and_no_compiler(guest, device_dir,
                                                              rasp4b_artifact):
    assert guest["tvm_importable"] is False
    assert guest["libs"] == sorted([
        str(device_dir / "neo_edge_runtime" / "_lib" / "libtvm_ffi.so"),
        str(device_dir / "neo_edge_runtime" / "_lib" / "libtvm_runtime.so"),
        str(rasp4b_artifact / "model.so"),
    ])


def test_winograd_convolutions_run_on_aarch64_as_on_the_host(residual_onnx, device_dir,
                                                             tmp_path):
    """A ResNet basic block: its 3x3 convolutions compile to Winograd F(4x4) kernels with
    4-lane NEON tiles for rasp4b, and compute what the host's artifact computes."""
    art = compile_model(residual_onnx, "rasp4b", tmp_path / "rasp4b")
    assert b"winograd4" in (art / artifact.LIBRARY).read_bytes()
    x = np.random.default_rng(8).standard_normal((1, 3, 20, 20)).astype(np.float32)
    expected = EdgeModel.load(compile_model(residual_onnx, "host", tmp_path / "host")).predict(x)
    out = run_guest(art, device_dir, x, tmp_path)["output"]
    np.testing.assert_allclose(out, expected["output"], rtol=1e-5, atol=1e-5)
