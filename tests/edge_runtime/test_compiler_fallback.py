"""The compiler's own passes make models faster, never decide whether they compile: a pass
that fails is skipped (and recorded), an optimized build that fails falls back to TVM's
stock build, and only what TVM itself cannot import or build is an error."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from neo_edge_runtime import CompileError, EdgeModel, compile_model
from neo_edge_runtime.artifact import MANIFEST
from neo_edge_runtime.compile import compiler, zoo


def ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def manifest(folder) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def assert_matches_onnxruntime(artifact, path, rng, atol=1e-4):
    model = EdgeModel.load(artifact)
    for _ in range(2):
        x = rng.standard_normal(model.inputs[0]["shape"]).astype(np.float32)
        np.testing.assert_allclose(model.predict(x)[model.outputs[0]["name"]], ort_run(path, x),
                                   atol=atol, rtol=atol)


def fail(*args, **kwargs):
    raise RuntimeError("injected failure\nsecond line")


@pytest.fixture(scope="module")
def bn_onnx(tmp_path_factory):
    """Two 1x1 convolutions with batch norms and ReLU on an 8x8 map: quick to compile."""
    g = zoo.GraphBuilder("bn", seed=4)
    x = g.relu(g.bn(g.conv("input", 3, 8, 1), 8))
    y = g.relu(g.add(g.bn(g.conv(x, 8, 8, 1), 8), x))
    path = tmp_path_factory.mktemp("models") / "bn.onnx"
    onnx.save(g.model([1, 3, 8, 8], y, [1, 8, 8, 8]), path)
    return path


def test_a_failing_pass_is_skipped_and_the_model_still_matches_onnxruntime(
        bn_onnx, tmp_path, rng, monkeypatch):
    monkeypatch.setattr(compiler, "_fold_batch_norm", fail)
    logs = []
    out = compile_model(bn_onnx, "host", tmp_path / "art", log=logs.append)
    m = manifest(out)
    assert m["optimizations"] == {"skipped": [
        {"pass": "fold_batch_norm", "reason": "RuntimeError: injected failure"}]}
    assert m["compile_options"]["weight_prepack"] is True  # the other passes still ran
    assert "skipped fold_batch_norm: RuntimeError: injected failure" in logs
    assert_matches_onnxruntime(out, bn_onnx, rng)


@pytest.mark.parametrize("step", ["_apply_database", "_precompute_transform"])
def test_a_failing_optimized_build_falls_back_to_the_stock_build(
        step, bn_onnx, tmp_path, rng, monkeypatch):
    monkeypatch.setattr(compiler, step, fail)
    logs = []
    out = compile_model(bn_onnx, "host", tmp_path / "art", log=logs.append)
    m = manifest(out)
    name = step.lstrip("_")
    assert m["optimizations"] == {"skipped": [
        {"pass": name, "reason": "RuntimeError: injected failure"}]}
    assert m["params"] is None and m["compile_options"]["weight_prepack"] is False
    assert f"skipped {name}: RuntimeError: injected failure" in logs
    assert "building with TVM's stock pipeline" in logs
    assert_matches_onnxruntime(out, bn_onnx, rng)


def test_models_without_failures_record_no_skipped_passes(host_artifact):
    assert "optimizations" not in manifest(host_artifact)


def constant_weights_model() -> onnx.ModelProto:
    """A convolution whose weight and bias are ``Constant`` outputs, a ``ConstantOfShape``
    shift, ReLU6 as ``Clip`` with constant bounds, and ``Max``/``Min`` with constants."""
    rng = np.random.default_rng(3)

    def const(name, value):
        return helper.make_node("Constant", [], [name], name=f"/{name}/Constant",
                                value=numpy_helper.from_array(np.asarray(value), name))

    nodes = [
        const("w", rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3),
        const("b", rng.standard_normal(8).astype(np.float32)),
        const("shift_shape", np.array([1, 8, 1, 1], dtype=np.int64)),
        helper.make_node("ConstantOfShape", ["shift_shape"], ["shift"], name="/shift",
                         value=numpy_helper.from_array(np.array([0.25], dtype=np.float32))),
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], name="/conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["conv", "shift"], ["shifted"], name="/add"),
        const("lo", np.float32(0.0)),
        const("hi", np.float32(6.0)),
        helper.make_node("Clip", ["shifted", "lo", "hi"], ["relu6"], name="/clip"),
        const("floor", np.float32(0.5)),
        const("level", rng.uniform(0, 2, (1, 8, 1, 1)).astype(np.float32)),
        helper.make_node("Max", ["relu6", "floor", "level"], ["maxed"], name="/max"),
        const("ceiling", np.float32(4.0)),
        helper.make_node("Min", ["maxed", "ceiling"], ["output"], name="/min"),
    ]
    graph = helper.make_graph(
        nodes, "constant_weights",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 10, 10])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 10, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_weights_from_constant_nodes_compile_and_match_onnxruntime(tmp_path, rng):
    path = tmp_path / "constant_weights.onnx"
    onnx.save(constant_weights_model(), path)
    out = compile_model(path, "host", tmp_path / "art")
    assert "optimizations" not in manifest(out)
    assert_matches_onnxruntime(out, path, rng)


def test_negative_squeeze_axes_keep_the_channels_last_layout(tmp_path):
    """TVM's layout conversion fails (std::bad_alloc) on ``squeeze`` with a negative axis."""
    import tvm
    from tvm import relax

    from neo_edge_runtime.targets import resolve

    x = relax.Var("x", relax.TensorType((1, 3, 8, 8), "float32"))
    w = relax.Var("w", relax.TensorType((4, 3, 8, 8), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w], attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w))
            y = bb.emit_output(bb.emit(relax.op.squeeze(y, axis=[-1, -2])))
        bb.emit_func_output(y)
    passes = compiler._Passes()
    target = tvm.target.Target(compiler._tvm_target(resolve("host")))
    mod = compiler._channels_last(bb.get(), target, passes)
    assert passes.skipped == []
    convs = [c for c in _calls(mod["main"]) if getattr(c.op, "name", "") == "relax.nn.conv2d"]
    assert [c.attrs.data_layout for c in convs] == ["NHWC"]


def _calls(func) -> list:
    from tvm import relax

    found = []
    relax.analysis.post_order_visit(
        func, lambda e: found.append(e) if isinstance(e, relax.Call) else None)
    return found


# -- models from PyTorch's ONNX exporter ------------------------------------------------


def _export(torch, net, shape, path):
    torch.manual_seed(0)
    net.eval()
    torch.onnx.export(net, (torch.randn(*shape),), str(path), dynamo=True,
                      input_names=["input"], output_names=["output"])
    return path


def sensor_net(torch):
    """A Conv1d network over 6 sensor channels of 64 samples, to 4 classes."""
    nn = torch.nn

    class Sensor(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv1d(6, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
                nn.Conv1d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1))
            self.classifier = nn.Linear(32, 4)

        def forward(self, x):
            return self.classifier(self.features(x).squeeze(-1))

    torch.manual_seed(0)
    return Sensor()


def tiny_vit(torch):
    """A pre-norm transformer encoder over 4x4 patches of a 16x16 image: 2 layers of
    width 32, 4 heads, GELU, a class token, softmax over 5 classes."""
    nn = torch.nn

    class ViT(nn.Module):
        def __init__(self, width=32):
            super().__init__()
            self.patch = nn.Conv2d(3, width, 4, stride=4)
            self.cls = nn.Parameter(torch.randn(1, 1, width))
            self.pos = nn.Parameter(torch.randn(1, 17, width) * 0.02)
            layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, 5)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
            x = self.encoder(x)
            return torch.softmax(self.head(self.norm(x[:, 0])), -1)

    torch.manual_seed(0)
    return ViT()


@pytest.mark.parametrize("build, shape", [(sensor_net, (1, 6, 64)), (tiny_vit, (1, 3, 16, 16))],
                         ids=["conv1d_sensor", "pre_norm_vit"])
def test_models_from_the_dynamo_exporter_compile_and_match_onnxruntime(build, shape, tmp_path,
                                                                      rng):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    path = _export(torch, build(torch), shape, tmp_path / "model.onnx")
    out = compile_model(path, "host", tmp_path / "art")
    # Our passes handle both: nothing falls back to the stock build.
    assert "optimizations" not in manifest(out)
    assert manifest(out)["compile_options"]["weight_prepack"] is True
    assert_matches_onnxruntime(out, path, rng, atol=1e-3)


# -- what TVM cannot import -------------------------------------------------------------


def test_fails_when_tvm_cannot_import_an_operator(tmp_path):
    # Det (matrix determinants): an operator TVM 0.27's importer has no converter for.
    graph = helper.make_graph(
        [helper.make_node("Det", ["input"], ["det"], name="/head/Det"),
         helper.make_node("Neg", ["det"], ["output"], name="/head/Neg")],
        "det", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [5, 3, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "det.onnx"
    onnx.save(model, path)
    with pytest.raises(CompileError, match=r"^det\.onnx: ONNX operators not supported by "
                                           r"TVM's importer: Det \(node /head/Det\)$"):
        compile_model(path, "host", tmp_path / "art")
    assert not (tmp_path / "art").exists()


def test_fails_naming_the_operator_and_nodes_when_tvm_cannot_build(bn_onnx, tmp_path,
                                                                   monkeypatch):
    def stock_fails(*args):
        raise RuntimeError("Check failed: cannot lower relax.nn.conv2d for this target")

    monkeypatch.setattr(compiler, "_apply_database", fail)
    monkeypatch.setattr(compiler, "_stock_build", stock_fails)
    with pytest.raises(CompileError) as exc:
        compile_model(bn_onnx, "host", tmp_path / "art")
    message = str(exc.value)
    assert message.startswith("bn.onnx: TVM could not build the model at Relax operator "
                              "nn.conv2d, from ONNX Conv (nodes ")
    assert message.endswith("RuntimeError: Check failed: cannot lower relax.nn.conv2d for "
                            "this target")
    assert isinstance(exc.value.__cause__, RuntimeError)
