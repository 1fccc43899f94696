"""compile_model: numerical agreement with ONNX Runtime and XGBoost, cross targets,
determinism, and clear errors."""

from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from neo_edge_runtime import CompileError, EdgeModel, TargetError, compile_model
from neo_edge_runtime.compile import zoo
from neo_edge_runtime.artifact import MANIFEST

ELF_MACHINES = {62: "EM_X86_64", 183: "EM_AARCH64", 40: "EM_ARM"}


def elf_machine(path) -> str:
    head = open(path, "rb").read(20)
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return ELF_MACHINES.get(struct.unpack_from("<H", head, 18)[0], "other")


def ort_run(path, x):
    return ort.InferenceSession(str(path)).run(None, {"input": x})[0]


MODELS = {
    "ops": lambda: zoo.ops_model(16),  # conv, depthwise, BN, pools, residual, concat, gemm, softmax
    "mlp": zoo.mlp,
    "mobilenet_v2": lambda: zoo.mobilenet_v2(32, 10, width=0.5),
    "resnet18": lambda: zoo.resnet18(32, 10),
    "squeezenet": lambda: zoo.squeezenet(48, 10),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_onnxruntime(name, tmp_path, rng):
    path = tmp_path / f"{name}.onnx"
    onnx.save(MODELS[name](), path)
    model = EdgeModel.load(compile_model(path, "host", tmp_path / "art"))
    for _ in range(3):
        x = rng.standard_normal(model.inputs[0]["shape"]).astype(np.float32)
        np.testing.assert_allclose(model.predict(x)["output"], ort_run(path, x), atol=1e-4,
                                   rtol=1e-4)


def fire_model():
    """Fire modules (a squeeze convolution, two expand convolutions concatenated): one read
    by the next squeeze convolution, one through a max pool, one by a convolution to more
    channels (a classifier), one also by an elementwise op."""
    g = zoo.GraphBuilder("fires", seed=6)

    def fire(x, cin, squeeze, expand):
        s = g.relu(g.conv(x, cin, squeeze, 1))
        return g.concat([g.relu(g.conv(s, squeeze, expand, 1)),
                         g.relu(g.conv(s, squeeze, expand, 3))])

    x = fire(g.relu(g.conv("input", 3, 16, 3)), 16, 8, 16)
    x = g.maxpool(fire(x, 32, 8, 16), 3, 2)
    x = fire(x, 32, 16, 32)
    x = g.add(fire(x, 64, 16, 32), x)
    return g.model([1, 3, 16, 16], g.conv(x, 64, 100, 1), [1, 100, 7, 7])


def test_concatenations_are_read_in_parts_and_match_onnxruntime(tmp_path, rng):
    import tvm
    from tvm import relax

    from neo_edge_runtime.compile import compiler
    from neo_edge_runtime.targets import resolve

    path = tmp_path / "fires.onnx"
    onnx.save(fire_model(), path)
    mod, _, _ = compiler._import(path, "ONNX", None, None)
    mod, _ = relax.frontend.detach_params(mod)
    target = tvm.target.Target(compiler._tvm_target(resolve("host")))
    ops = [c.op.name for c in _calls(compiler._channels_last(mod, target)["main"])
           if isinstance(c.op, tvm.ir.Op)]
    # Fire 1 feeds a squeeze convolution, fire 2 a max pool (pooled in halves) and then a
    # squeeze convolution: read in parts. Fire 3 is also read by an add, and fire 4 by
    # the add alone: both stay whole.
    assert ops.count("relax.concat") == 2
    assert ops.count("relax.nn.max_pool2d") == 2
    assert ops.count("relax.nn.conv2d") == 14 + 2

    model = EdgeModel.load(compile_model(path, "host", tmp_path / "art"))
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x)["output"], ort_run(path, x), atol=1e-5,
                               rtol=1e-5)


def _calls(func) -> list:
    from tvm import relax

    found = []
    relax.analysis.post_order_visit(
        func, lambda e: found.append(e) if isinstance(e, relax.Call) else None)
    return found


def test_manifest_records_what_was_compiled(host_artifact, ops_onnx):
    m = json.loads((host_artifact / MANIFEST).read_text())
    assert m["format_version"] == 1
    assert m["model"] == {"name": "ops", "version": "1.0.0"}
    assert m["framework"] == "ONNX"
    assert m["target"]["name"] == "host" and m["target"]["tvm_target"]["kind"] == "llvm"
    assert m["target"]["tvm_target"]["mcpu"] != "native"
    assert m["inputs"] == [{"name": "input", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "output", "shape": [1, 10], "dtype": "float32"}]
    import hashlib
    assert m["source_sha256"] == hashlib.sha256(ops_onnx.read_bytes()).hexdigest()
    assert set(m["files"]) == {"model.so", "params.bin"} and m["params"] == "params.bin"
    assert m["compile_options"] == {"tune_trials": 0, "weight_prepack": True,
                                    "input_shapes": {"input": [1, 3, 16, 16]}}
    assert m["tvm_version"] == "0.27.0.post1"
    assert m["metadata"]["labels"][3] == "3"


@pytest.mark.parametrize("target", ["host", "rasp4b"])
def test_untuned_builds_give_convolutions_their_template_schedule(ops_onnx, tmp_path, target):
    """No tuning (a cross compile cannot measure): each convolution still gets the first
    template candidate, whose weights ship packed in the tile's read order, output
    channels innermost, instead of channels-last OHWI (output channels first)."""
    import tvm

    out = compile_model(ops_onnx, target, tmp_path / target)
    params = tvm.runtime.load_param_dict_from_file(str(out / "params.bin"))
    shapes = [tuple(p.shape) for p in params.values()]
    ohwi = {(8, 3, 3, 3), (8, 3, 3, 1), (8, 1, 1, 8)}  # the ops model's 3 convolutions
    assert not ohwi & set(shapes), shapes
    # the weights (not the 8 shifts of each) in tiles of 4 or 8 lanes
    packed = [s for s in shapes if s[-1] in (4, 8) and int(np.prod(s)) >= 64]
    assert len(packed) == 3, shapes


@pytest.mark.parametrize("target,machine", [("rasp4b", "EM_AARCH64"), ("rasp3b", "EM_ARM"),
                                            ("ml_c6g", "EM_AARCH64"), ("ml_c5", "EM_X86_64")])
def test_cross_targets_produce_a_library_for_the_device(target, machine, ops_onnx, tmp_path):
    out = compile_model(ops_onnx, target, tmp_path / target)
    assert elf_machine(out / "model.so") == machine


def test_nvidia_targets_produce_cuda_kernels_without_a_gpu(ops_onnx, tmp_path):
    out = compile_model(ops_onnx, "jetson_xavier", tmp_path / "xavier")
    lib = (out / "model.so").read_bytes()
    assert elf_machine(out / "model.so") == "EM_AARCH64"
    assert b"__global__" in lib, "no CUDA kernel in the Jetson library"
    m = json.loads((out / MANIFEST).read_text())
    assert m["target"]["device"] == "cuda" and m["target"]["tvm_target"]["arch"] == "sm_72"


def test_same_inputs_give_byte_identical_artifacts(ops_onnx, tmp_path):
    a = compile_model(ops_onnx, "rasp4b", tmp_path / "a")
    b = compile_model(ops_onnx, "rasp4b", tmp_path / "b")
    assert (a / MANIFEST).read_bytes() == (b / MANIFEST).read_bytes()
    assert (a / "model.so").read_bytes() == (b / "model.so").read_bytes()


@pytest.mark.parametrize("objective,extra", [
    ("multi:softprob", {"num_class": 10}),
    ("binary:logistic", {}),
    ("reg:squarederror", {}),
])
def test_xgboost_predictions_equal_xgboost(objective, extra, tmp_path):
    xgb = pytest.importorskip("xgboost")
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    if objective == "binary:logistic":
        y = (y >= 5).astype(int)
    booster = xgb.train({"objective": objective, "max_depth": 4, "seed": 0, **extra},
                        xgb.DMatrix(X, label=y), num_boost_round=12)
    booster.save_model(tmp_path / "model.json")
    model = EdgeModel.load(compile_model(tmp_path / "model.json", "host", tmp_path / "art"))
    expected = booster.predict(xgb.DMatrix(X[:200]))
    got = np.concatenate([next(iter(model.predict(X[i:i + 1]).values())) for i in range(200)])
    if expected.ndim == 1:
        got = got[:, -1]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    if expected.ndim == 2:
        assert (got.argmax(1) == expected.argmax(1)).all()


def test_xgboost_takes_no_input_shapes(tmp_path):
    xgb = pytest.importorskip("xgboost")
    b = xgb.train({"objective": "reg:squarederror"},
                  xgb.DMatrix(np.ones((4, 3)), label=np.arange(4)), 2)
    b.save_model(tmp_path / "m.json")
    with pytest.raises(CompileError, match="XGBoost models take no input_shapes"):
        compile_model(tmp_path / "m.json", "host", tmp_path / "art",
                      input_shapes={"input": [1, 3]})


def test_fails_when_model_file_is_not_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"definitely not a protobuf \x00\xff" * 10)
    with pytest.raises(CompileError, match="'model.onnx' is not a valid ONNX model"):
        compile_model(bad, "host", tmp_path / "art")
    assert not (tmp_path / "art").exists()


def test_fails_when_model_file_is_missing(tmp_path):
    with pytest.raises(CompileError, match="model file .*nope.onnx' does not exist"):
        compile_model(tmp_path / "nope.onnx", "host", tmp_path / "art")


def test_fails_when_target_name_is_wrong(ops_onnx, tmp_path):
    with pytest.raises(TargetError, match="unknown target 'raspberry'; supported targets are"):
        compile_model(ops_onnx, "raspberry", tmp_path / "art")


# TensorFlow, TFLite and Keras files convert through tf2onnx: test_tf_convert.py.
@pytest.mark.parametrize("suffix,hint", [(".params", "mxnet.onnx.export_model"),
                                         (".weights", "convert it to ONNX")])
def test_fails_with_export_hint_for_frameworks_the_compiler_cannot_read(suffix, hint, tmp_path):
    f = tmp_path / f"model{suffix}"
    f.write_bytes(b"x")
    with pytest.raises(CompileError, match=f"does not read .* models: .*{hint}"):
        compile_model(f, "host", tmp_path / "art")


def test_fails_when_a_dynamic_input_has_no_shape(tmp_path):
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "dyn",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "dyn.onnx")
    with pytest.raises(CompileError, match=r"input 'x' has a dynamic shape \['N', 4\]"):
        compile_model(tmp_path / "dyn.onnx", "host", tmp_path / "art")
    out = compile_model(tmp_path / "dyn.onnx", "host", tmp_path / "art",
                        input_shapes={"x": [2, 4]})
    assert EdgeModel.load(out).inputs[0]["shape"] == [2, 4]


def test_a_failed_compile_leaves_the_previous_artifact(ops_onnx, tmp_path):
    out = compile_model(ops_onnx, "host", tmp_path / "art")
    before = (out / MANIFEST).read_bytes()
    with pytest.raises(CompileError):
        compile_model(ops_onnx, "host", out, input_shapes={"nope": [1]})
    assert (out / MANIFEST).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


@pytest.mark.slow
def test_tuning_runs_and_reuses_its_database(tmp_path, rng):
    path = tmp_path / "mlp.onnx"
    onnx.save(zoo.mlp(features=16, hidden=(), classes=4), path)
    db = tmp_path / "tuning"
    first = compile_model(path, "host", tmp_path / "t1", tune_trials=8, tuning_db=db)
    records = (db / "database_tuning_record.json").read_text().count("\n")
    assert records > 0
    logs = []
    second = compile_model(path, "host", tmp_path / "t2", tune_trials=8, tuning_db=db,
                           log=logs.append)
    assert any("reusing 8 tuning trials" in m for m in logs)
    assert (db / "database_tuning_record.json").read_text().count("\n") == records
    assert (first / "model.so").read_bytes() == (second / "model.so").read_bytes()
    m = json.loads((first / MANIFEST).read_text())
    assert m["compile_options"]["tune_trials"] == 8 and m["params"] == "params.bin"
    model = EdgeModel.load(first)
    x = rng.standard_normal((1, 16)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x)["output"], ort_run(path, x), atol=1e-4)


def test_pytorch_export_archive_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 8 * 8, 5)

        def forward(self, x):
            return torch.softmax(self.fc(torch.relu(self.conv(x)).flatten(1)), -1)

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    torch.export.save(torch.export.export(net, (x,)), tmp_path / "net.pt2")
    model = EdgeModel.load(compile_model(tmp_path / "net.pt2", "host", tmp_path / "art"))
    assert model.inputs == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    np.testing.assert_allclose(model.predict(x.numpy())["output0"],
                               net(x).detach().numpy(), atol=1e-5)
