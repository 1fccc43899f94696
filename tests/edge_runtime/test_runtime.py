"""EdgeModel: verification before loading, runtime library only, input checks, threads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neo_edge_runtime import ArtifactError, EdgeModel, InputError


@pytest.fixture()
def model(host_artifact):
    return EdgeModel.load(host_artifact)


@pytest.fixture()
def copy(host_artifact, tmp_path):
    return shutil.copytree(host_artifact, tmp_path / "copy")


def test_predict_returns_named_outputs(model, ops_onnx, rng):
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    out = model.predict({"input": x})
    assert list(out) == ["output"]
    expected = ort.InferenceSession(str(ops_onnx)).run(None, {"input": x})[0]
    np.testing.assert_allclose(out["output"], expected, atol=1e-4)
    np.testing.assert_array_equal(model.predict(x)["output"], out["output"])


def test_outputs_belong_to_the_caller(model, rng):
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    first = model.predict(x)["output"]
    assert first.flags.owndata and first.flags.writeable and first.flags.c_contiguous
    kept = first.copy()
    model.predict(np.zeros_like(x))
    np.testing.assert_array_equal(first, kept)


def test_output_views_are_made_once_per_address_the_pool_hands_out(model, rng, monkeypatch):
    """The VM's pooled allocator returns an output in a few buffers in turn (two for this
    model, three for the zoo's MLP); a numpy view of one costs more than the MLP's
    kernels, so each address gets one, and later calls reuse it."""
    from neo_edge_runtime import _ffi

    made, addresses = [], set()
    real_view, real_address = _ffi.host_view, _ffi.data_address
    monkeypatch.setattr(_ffi, "host_view", lambda a, n: made.append(a) or real_view(a, n))
    monkeypatch.setattr(_ffi, "data_address",
                        lambda t: addresses.add(real_address(t)) or real_address(t))
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    expected = model.predict(x)["output"]
    for _ in range(10):
        np.testing.assert_array_equal(model.predict(x)["output"], expected)
    assert len(addresses) > 1  # what this test is about: the memory changes between calls
    assert sorted(made) == sorted(addresses)


def test_fails_when_input_name_is_wrong(model):
    with pytest.raises(InputError, match="unknown input 'image' for model 'ops'; its inputs "
                                         "are input"):
        model.predict({"image": np.zeros((1, 3, 16, 16), np.float32)})


def test_fails_when_input_is_missing(model):
    with pytest.raises(InputError, match="missing input 'input'"):
        model.predict({})


def test_fails_when_shape_is_wrong(model):
    with pytest.raises(InputError, match=r"input 'input' must have shape \[1, 3, 16, 16\]; "
                                         r"got \[1, 3, 8, 8\]"):
        model.predict(np.zeros((1, 3, 8, 8), np.float32))


def test_fails_when_dtype_is_wrong(model):
    with pytest.raises(InputError, match=r"input 'input' must be float32; got float64"):
        model.predict(np.zeros((1, 3, 16, 16)))


def test_fails_when_a_file_is_missing(copy):
    (copy / "model.so").unlink()
    with pytest.raises(ArtifactError, match="is missing 'model.so'"):
        EdgeModel.load(copy)


def test_fails_when_one_byte_of_the_library_changed(copy):
    lib = copy / "model.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0x01
    lib.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="'model.so' .* does not match its manifest"):
        EdgeModel.load(copy)


def test_fails_when_the_library_is_truncated(copy):
    lib = copy / "model.so"
    lib.write_bytes(lib.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="changed or truncated"):
        EdgeModel.load(copy)


def test_fails_when_the_manifest_is_not_json(copy):
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json is not valid JSON"):
        EdgeModel.load(copy)


def test_fails_when_the_folder_is_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="is not an artifact folder: it has no manifest.json"):
        EdgeModel.load(tmp_path)


def test_fails_when_the_artifact_is_for_another_architecture(ops_onnx, tmp_path):
    from neo_edge_runtime import compile_model

    art = compile_model(ops_onnx, "rasp4b", tmp_path / "rpi")
    with pytest.raises(ArtifactError, match=r"compiled for rasp4b \(aarch64\) and cannot run "
                                            r"on this x86_64 machine"):
        EdgeModel.load(art)


def test_loads_only_the_runtime_library(host_artifact):
    """A fresh process: load + predict must never map the 259 MB compiler library."""
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from neo_edge_runtime import EdgeModel
        m = EdgeModel.load({str(host_artifact)!r})
        m.predict(np.zeros((1, 3, 16, 16), np.float32))
        maps = open("/proc/self/maps").read()
        assert "libtvm_runtime.so" in maps, "runtime library not mapped"
        assert "libtvm_compiler" not in maps, "compiler library mapped"
        assert "tvm" not in sys.modules, "the tvm package was imported"
        assert "tvm_ffi" not in sys.modules, "the tvm_ffi package was imported"
        assert "torch" not in sys.modules, "PyTorch was imported"
        import torch  # still importable by the application afterwards
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_calls_from_many_threads_agree(model, rng):
    xs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    expected = [model.predict(x)["output"] for x in xs]
    results = {}

    def work(k):
        for _ in range(5):
            results.setdefault(k, []).append(model.predict(xs[k])["output"])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(8):
        for got in results[k]:
            np.testing.assert_array_equal(got, expected[k])


def test_thread_count_is_settable(host_artifact):
    code = textwrap.dedent(f"""
        from neo_edge_runtime import EdgeModel, _ffi
        EdgeModel.load({str(host_artifact)!r}, num_threads=1)
        print(_ffi.get_global("runtime.NumThreads")())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def _in_fresh_process(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env={**environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_thread_pool_starts_with_the_physical_cores_or_as_asked(host_artifact):
    # TVM alone starts half the logical CPUs on x86: one thread on a 2-core machine.
    from neo_edge_runtime.runtime import physical_cores

    code = f"""
        from neo_edge_runtime import EdgeModel, _ffi
        EdgeModel.load({str(host_artifact)!r}{{}})
        print(_ffi.get_global("runtime.NumThreads")())
    """
    assert _in_fresh_process(code.format("")) == str(physical_cores())
    assert _in_fresh_process(code.format(", num_threads=3")) == "3"


def test_more_threads_than_the_running_pool_is_refused(host_artifact):
    code = f"""
        import numpy as np
        from neo_edge_runtime import EdgeModel
        from neo_edge_runtime.runtime import set_num_threads
        m = EdgeModel.load({str(host_artifact)!r}, num_threads=1)
        m.predict(np.zeros((1, 3, 16, 16), np.float32))
        set_num_threads(1)
        try:
            set_num_threads(2)
        except ValueError as exc:
            print(exc)
    """
    assert _in_fresh_process(code, TVM_NUM_THREADS="1") == (
        "num_threads=2 is more than the 1 threads TVM's pool started with in this process; "
        "start the process with TVM_NUM_THREADS=2")


def test_fails_when_thread_count_is_not_positive(host_artifact):
    with pytest.raises(ValueError, match="num_threads must be a positive integer; got 0"):
        EdgeModel.load(host_artifact, num_threads=0)


def test_warmup_and_latency_percentiles(model):
    assert model.latency_stats()["count"] == 0
    model.warmup(5)
    stats = model.latency_stats()
    assert stats["count"] == 5
    assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]


# Whatever a caller passes, predict answers or raises InputError: never another exception.
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                     st.text(max_size=8), st.binary(max_size=8))
_NESTED = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner),
                       max_leaves=20)
_KEYS = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.sampled_from(["input"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(_NESTED, st.dictionaries(_KEYS, _NESTED, max_size=3)))
def test_predict_refuses_what_is_not_its_input_with_input_error_only(model, value):
    try:
        model.predict(value)
    except InputError:
        pass


@pytest.mark.parametrize("value", [
    [[1, 2], [3]],                      # ragged
    [10 ** 400],                        # an integer too large for any dtype
    ["a", "b"],                         # strings
    {1: np.zeros(1), "x": np.zeros(1)},  # keys that do not sort together
])
def test_fails_with_input_error_on_unreadable_input(model, value):
    with pytest.raises(InputError):
        model.predict(value)


# A manifest is input too: whatever one holds, load answers with a model or ArtifactError.
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)
_FIELDS = ["model", "target", "library", "params", "inputs", "outputs", "files", "framework"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_FIELDS), value=st.one_of(
    _JSON, st.sampled_from(["model.so", "params.bin", "manifest.json", "../x", "/etc/passwd"]),
    st.lists(st.fixed_dictionaries({"name": st.text(max_size=4),
                                    "shape": st.lists(st.integers(-2, 1 << 40), max_size=4),
                                    "dtype": st.sampled_from(["float32", "int64", "object", 3])}),
             max_size=2)))
def test_load_refuses_a_malformed_manifest_with_artifact_error_only(host_artifact, tmp_path, field,
                                                                    value):
    import json
    folder = tmp_path / f"m{abs(hash((field, repr(value)))) % 10**9}"
    shutil.copytree(host_artifact, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest[field] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    try:
        EdgeModel.load(folder).close()
    except ArtifactError:
        pass
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("field,value,message", [
    ("inputs", [{"name": "x", "shape": [1 << 40], "dtype": "float32"}],
     r"inputs\[0\]\.shape must be a list of non-negative integers"),
    ("inputs", [{"name": "x", "shape": [1 << 20, 1 << 20], "dtype": "float32"}],
     r"inputs\[0\]\.shape must be at most 2147483648 elements"),
    ("outputs", [{"name": "y", "shape": [1], "dtype": "object"}], r"outputs\[0\] must be an object"),
    ("params", "model.so", r"does not load in the TVM runtime"),
    ("model", "digits", r"model must be an object with name and version strings; got 'digits'"),
])
def test_fails_with_artifact_error_on_a_malformed_manifest(copy, field, value, message):
    import json
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest[field] = value
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        EdgeModel.load(copy)


def test_a_model_without_inputs_loads(copy):
    import json
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["inputs"] = []
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert EdgeModel.load(copy).inputs == []


def test_staged_inputs_path_agrees_with_the_cpu_path(host_artifact, rng):
    """A GPU model's inputs live in device tensors, copied in and out through the C ABI
    on each call. The same path on a CPU artifact (device tensors on the CPU) must give
    what the zero-copy CPU path gives, call after call."""
    from neo_edge_runtime import artifact

    direct = EdgeModel.load(host_artifact)
    staged = EdgeModel._load_vm(host_artifact, artifact.verify(host_artifact), "cpu", staged=True)
    assert staged._staged and not direct._staged
    for _ in range(3):
        x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
        np.testing.assert_array_equal(staged.predict(x)["output"], direct.predict(x)["output"])


def test_a_gpu_artifact_without_the_cuda_runtime_names_what_is_missing(ops_onnx, tmp_path):
    """ml_g4dn is an x86-64 host with an NVIDIA T4: it compiles here without a GPU, and
    loading it where CUDA 13's runtime is absent says so instead of a raw OSError."""
    from neo_edge_runtime.compile.compiler import compile_model
    from neo_edge_runtime.runtime import CUDA_RUNTIME_LIBRARY

    out = compile_model(ops_onnx, "ml_g4dn", tmp_path / "g4dn")
    code = textwrap.dedent(f"""
        from neo_edge_runtime import ArtifactError, EdgeModel
        try:
            EdgeModel.load({str(out)!r})
        except ArtifactError as exc:
            print(exc)
        else:
            print("loaded")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    if run.stdout.strip() == "loaded":  # a machine with an NVIDIA GPU and CUDA 13
        return
    message = run.stdout
    assert ("libtvm_runtime_cuda.so" in message and CUDA_RUNTIME_LIBRARY in message
            or "has none the CUDA driver can see" in message), message
