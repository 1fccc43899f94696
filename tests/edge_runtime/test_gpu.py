"""NVIDIA: the CUDA bundle, and a model compiled for the local GPU run from it.

The bundle test runs everywhere. The ``gpu`` test needs an NVIDIA GPU the driver sees
(``nvidia-smi``) and CUDA 13's runtime; it is skipped elsewhere (``make gpu-check`` runs it
on a GPU machine).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import textwrap
import zipfile

import numpy as np
import onnxruntime as ort
import pytest

from neo_edge_runtime.compile.bundle import build_bundle
from neo_edge_runtime.targets import host_arch

from test_bundle import device_python, run_on_device  # noqa: F401  (a fixture, and a helper)


@pytest.fixture(scope="module")
def cuda_bundle(tmp_path_factory):
    return build_bundle(host_arch(), tmp_path_factory.mktemp("cuda-bundle"), cuda=True)


def test_the_cuda_bundle_is_the_cpu_bundle_plus_the_cuda_runtime(cuda_bundle, tmp_path):
    plain = build_bundle(host_arch(), tmp_path)
    with zipfile.ZipFile(cuda_bundle) as z:
        cuda_names = set(z.namelist())
    with zipfile.ZipFile(plain) as z:
        plain_names = set(z.namelist())
    assert cuda_bundle.name == f"neo-edge-runtime-{host_arch()}-cuda.zip"
    assert cuda_names - plain_names == {"neo_edge_runtime/_lib/libtvm_runtime_cuda.so"}


def _gpu_compute_capability():
    """``sm_XY`` of the first GPU, or None where there is no GPU and driver."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return "sm_" + out.stdout.splitlines()[0].strip().replace(".", "")


def _runs_on_this_gpu(model, x, cuda_bundle, device_python, tmp_path) -> None:
    """``model`` (an ONNX file, one input, one output) compiled for this machine's GPU
    runs from the CUDA bundle, without TVM's compiler, and matches ONNX Runtime."""
    sm = _gpu_compute_capability()
    if sm is None:
        pytest.skip("no NVIDIA GPU and driver on this machine")
    from neo_edge_runtime.compile.compiler import compile_model
    from neo_edge_runtime.targets import resolve_platform

    arch = {"x86_64": "X86_64", "aarch64": "ARM64"}[host_arch()]
    target = resolve_platform("LINUX", arch, "NVIDIA",
                              {"gpu-code": sm, "trt-ver": "10.3", "cuda-ver": "13.0"})
    artifact = compile_model(model, target, tmp_path / "gpu")
    device = tmp_path / "device"
    zipfile.ZipFile(cuda_bundle).extractall(device)
    session = ort.InferenceSession(str(model))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy",
            session.run(None, {session.get_inputs()[0].name: x})[0])
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from neo_edge_runtime import EdgeModel
        m = EdgeModel.load({str(artifact)!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        for _ in range(3):
            (got,) = m.predict(x).values()
            np.testing.assert_allclose(got, np.load({str(tmp_path / 'expected.npy')!r}),
                                       atol=1e-4)
        assert "tvm" not in sys.modules and "tvm_ffi" not in sys.modules
        maps = open("/proc/self/maps").read()
        assert "libtvm_runtime_cuda.so" in maps and "libtvm_compiler" not in maps
        print("ok")
    """)
    out = run_on_device(device_python, device, code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.gpu
def test_a_model_compiled_for_this_gpu_runs_from_the_cuda_bundle(cuda_bundle, ops_onnx,
                                                                  device_python, tmp_path):
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    _runs_on_this_gpu(ops_onnx, x, cuda_bundle, device_python, tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_a_recurrent_model_compiled_for_this_gpu_runs_from_the_cuda_bundle(
        op, cuda_bundle, device_python, tmp_path):
    """The recurrence kernels are built again for the GPU (``rnn.for_gpu``): one thread
    per loop nest, reading the states it wrote."""
    from onnx import TensorProto, helper, numpy_helper

    gates, hidden, steps = {"LSTM": 4, "GRU": 3}[op], 16, 7
    rng = np.random.default_rng(5)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in [("W", (2, gates * hidden, 3)),
                                   ("R", (2, gates * hidden, hidden)),
                                   ("B", (2, 2 * gates * hidden))]]
    node = helper.make_node(op, ["X", "W", "R", "B"], ["Y"], hidden_size=hidden,
                            direction="bidirectional")
    graph = helper.make_graph(
        [node], "rnn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [steps, 1, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [steps, 2, 1, hidden])],
        weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    path = tmp_path / "rnn.onnx"
    path.write_bytes(model.SerializeToString())
    x = rng.standard_normal((steps, 1, 3)).astype(np.float32)
    _runs_on_this_gpu(path, x, cuda_bundle, device_python, tmp_path)
