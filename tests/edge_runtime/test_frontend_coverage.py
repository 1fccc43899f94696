"""ONNX models the compiler used to refuse or get wrong, from real third parties: ONNX's
own backend node test cases (run through :mod:`neo_edge_runtime.compile.onnx_backend`
and checked as ONNX's runner checks them) and models exported by PyTorch's ONNX
exporters (checked against ONNX Runtime):

- ConvTranspose with ``output_shape``, and a U-Net (transposed convolution, skip
  concatenation) whose optimized build used to fail;
- Resize/Upsample whose scales or sizes are computed from shapes or passed as inputs;
- LayerNormalization's optional outputs Mean and InvStdDev;
- symbolic and zero-size input dimensions;
- element types the edge runtime cannot serve, and NonMaxSuppression's data-dependent
  output: a clear CompileError naming what is refused.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

from neo_edge_runtime import CompileError, EdgeModel, compile_model
from neo_edge_runtime.artifact import MANIFEST
from neo_edge_runtime.compile import cli, compiler


# -- ONNX's backend node test cases -----------------------------------------------------


#: The onnx.backend.test.case.node modules that define the cases used here (importing
#: these few instead of collecting all 1,884 cases).
NODE_MODULES = ("convtranspose", "resize", "layernormalization", "castlike",
                "nonmaxsuppression")


def _backend_cases(names):
    import importlib

    from onnx.backend.test.case import node

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for module in NODE_MODULES:
            importlib.import_module(f"{node.__name__}.{module}")
    cases = {c.name: c for c in node._NodeTestCases if c.name in names}
    assert set(cases) == set(names), set(names) - set(cases)
    return [pytest.param(cases[n], id=n) for n in names]


PASSING = [
    # TVM's importer ignored output_shape: the output was one row and column short.
    "test_convtranspose_output_shape",
    "test_convtranspose_autopad_same", "test_convtranspose_dilations",
    "test_convtranspose_group_2",
    # Scales and sizes are graph inputs: compiled in as constants with the values run.
    "test_resize_upsample_scales_nearest", "test_resize_downsample_sizes_linear_pytorch_half_pixel",
    # Mean and InvStdDev came back as 0-d placeholders.
    "test_layer_normalization_4d_axis1", "test_layer_normalization_3d_axis_negative_2_epsilon",
    # The function bodies: Shape of a static tensor now folds to a constant.
    "test_layer_normalization_2d_axis0_expanded_ver18",
    # 'like' is [0]: a zero-size dimension is static, not "dynamic".
    "test_castlike_FLOAT16_to_FLOAT",
]


@pytest.mark.parametrize("case", _backend_cases(PASSING))
def test_backend_case_matches_reference(case):
    from onnx.backend.test.runner import Runner, _normalize_tensor

    from neo_edge_runtime.compile import onnx_backend

    rep = onnx_backend.prepare(case.model, "CPU")
    try:
        for inputs, expected in case.data_sets:
            outputs = rep.run([_normalize_tensor(x) for x in inputs])
            Runner.assert_similar_outputs([_normalize_tensor(x) for x in expected], outputs,
                                          rtol=case.rtol, atol=case.atol)
    finally:
        rep.close()


@pytest.mark.parametrize("case", _backend_cases(["test_nonmaxsuppression_suppress_by_IOU"]))
def test_fails_when_an_output_shape_depends_on_the_data(case):
    from neo_edge_runtime.compile import onnx_backend

    inputs = [np.asarray(x) for x in case.data_sets[0][0]]
    with pytest.raises(CompileError, match=r"NonMaxSuppression \(node selected_indices\) is "
                                           r"not supported: its output 'selected_indices' has "
                                           r"one row per box selected"):
        onnx_backend.run_model(case.model, inputs)


@pytest.mark.parametrize("elem", [TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN,
                                  TensorProto.FLOAT8E5M2FNUZ, TensorProto.INT4,
                                  TensorProto.UINT4, TensorProto.FLOAT4E2M1, TensorProto.STRING],
                         ids=helper.tensor_dtype_to_string)
@pytest.mark.parametrize("where", ["input", "output"])
def test_fails_naming_the_tensor_whose_element_type_the_runtime_cannot_serve(elem, where,
                                                                             tmp_path):
    x_type, y_type = (elem, TensorProto.FLOAT) if where == "input" else (TensorProto.FLOAT, elem)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=y_type)], "cast",
        [helper.make_tensor_value_info("x", x_type, [2, 3])],
        [helper.make_tensor_value_info("y", y_type, [2, 3])])
    path = tmp_path / "cast.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    name = "x" if where == "input" else "y"
    kind = helper.tensor_dtype_to_string(elem).replace("TensorProto.", "")
    with pytest.raises(CompileError, match=rf"^{where} '{name}' is a tensor of {kind}; the "
                                           r"edge runtime's inputs and outputs are tensors of "
                                           r"bool, int8"):
        compile_model(path, "host", tmp_path / "art")
    assert not (tmp_path / "art").exists()


# -- models from PyTorch's ONNX exporters -----------------------------------------------


def _export(torch, net, shape, path, dynamo=True, dynamic=None):
    """``net`` exported to ``path``; ``dynamic``: the input's dims (index to name) left
    symbolic."""
    torch.manual_seed(0)
    net.eval()
    kwargs = {}
    if dynamic and dynamo:
        kwargs["dynamic_shapes"] = ({i: torch.export.Dim(n, min=2, max=64)
                                     for i, n in dynamic.items()},)
    elif dynamic:
        kwargs["dynamic_axes"] = {"input": dict(dynamic)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(*shape),), str(path), dynamo=dynamo,
                          input_names=["input"], output_names=["output"], **kwargs)
    return path


def _unet(torch):
    """Conv2d encoder, a stride-2 ConvTranspose2d decoder and a skip concatenation."""
    nn = torch.nn

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.enc2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
            self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
            self.dec = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 2, 1))

        def forward(self, x):
            skip = self.enc1(x)
            return self.dec(torch.cat([self.up(self.enc2(skip)), skip], 1))

    torch.manual_seed(0)
    return UNet()


def _interpolating(torch, **kwargs):
    """A convolution, then ``F.interpolate(..., **kwargs)``; ``size="double"``: the
    size computed from the feature map's own (``x.shape[2] * 2``)."""
    nn, F = torch.nn, torch.nn.functional

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            if kwargs.get("size") == "double":
                return F.interpolate(y, size=(y.shape[2] * 2, y.shape[3] * 2),
                                     mode=kwargs["mode"])
            return F.interpolate(y, **kwargs)

    torch.manual_seed(0)
    return Up()


def _matches_onnxruntime(artifact, path, rng, atol=1e-3):
    model = EdgeModel.load(artifact)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = rng.standard_normal(model.inputs[0]["shape"]).astype(np.float32)
    np.testing.assert_allclose(model.predict(x)[model.outputs[0]["name"]],
                               sess.run(None, {"input": x})[0], atol=atol, rtol=atol)


def _manifest(folder) -> dict:
    return json.loads((folder / MANIFEST).read_text())


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    return torch


@pytest.fixture(scope="module")
def unet_onnx(torch, tmp_path_factory):
    """The U-Net, its batch dimension symbolic: input ['batch', 3, 32, 32]."""
    return _export(torch, _unet(torch), (2, 3, 32, 32),
                   tmp_path_factory.mktemp("unet") / "unet.onnx", dynamic={0: "batch"})


def test_unet_compiles_with_our_passes_and_matches_onnxruntime(unet_onnx, tmp_path, rng):
    out = compile_model(unet_onnx, "host", tmp_path / "art", input_shapes={"input": [1, 3, 32, 32]})
    # The transposed convolution used to reach the VM's code generator in NHWC, unlowered:
    # the optimized build failed and TVM's stock pipeline built the model.
    assert "optimizations" not in _manifest(out)
    assert _manifest(out)["compile_options"]["weight_prepack"] is True
    _matches_onnxruntime(out, unet_onnx, rng)


@pytest.mark.parametrize("dynamo, dynamic, kwargs", [
    # Shape -> Squeeze -> Mul -> Reshape -> Concat -> Resize(sizes)
    (True, {2: "h", 3: "w"}, {"size": "double", "mode": "bilinear"}),
    # Shape -> Gather -> Cast -> Mul -> Cast -> Floor -> Unsqueeze -> Concat -> Resize(sizes)
    (False, {2: "h", 3: "w"}, {"scale_factor": 2.0, "mode": "nearest",
                               "recompute_scale_factor": True}),
    (True, {2: "h", 3: "w"}, {"scale_factor": 2.0, "mode": "nearest",
                              "recompute_scale_factor": True}),
], ids=["dynamo-size-from-shape", "torchscript-scale-factor", "dynamo-scale-factor"])
def test_resize_with_sizes_computed_from_shapes_compiles(torch, dynamo, dynamic, kwargs, tmp_path,
                                                         rng):
    path = _export(torch, _interpolating(torch, **kwargs), (1, 3, 8, 8),
                   tmp_path / "up.onnx", dynamo=dynamo, dynamic=dynamic)
    assert "Shape" in {n.op_type for n in onnx.load(path).graph.node}
    out = compile_model(path, "host", tmp_path / "art", input_shapes={"input": [1, 3, 8, 8]})
    assert EdgeModel.load(out).outputs[0]["shape"] == [1, 4, 16, 16]
    _matches_onnxruntime(out, path, rng)


# -- symbolic dimensions ----------------------------------------------------------------

SYMBOLIC = (r"^unet\.onnx: input 'input' has a dynamic shape \['batch', 3, 32, 32\] \(its "
            r"dimension 'batch' is symbolic\); the edge runtime serves static shapes: pass "
            r"input_shapes=\{'input': \[1, 3, 32, 32\]\} \(neo-edge compile --input-shape "
            r"input=1,3,32,32\)$")


def test_fails_naming_the_symbolic_dimension_without_input_shapes(unet_onnx, tmp_path):
    with pytest.raises(CompileError, match=SYMBOLIC.replace(r"^unet\.onnx: ", "^")):
        compile_model(unet_onnx, "host", tmp_path / "art")
    assert not (tmp_path / "art").exists()


def test_cli_compiles_a_symbolic_batch_with_input_shape_and_explains_without(
        unet_onnx, tmp_path, capsys):
    assert cli.main(["compile", str(unet_onnx), "-o", str(tmp_path / "none"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neo-edge compile: error: input 'input' has a dynamic shape "
                          "['batch', 3, 32, 32] (its dimension 'batch' is symbolic)")
    assert err.endswith("(neo-edge compile --input-shape input=1,3,32,32)")
    assert not (tmp_path / "none").exists()
    assert cli.main(["compile", str(unet_onnx), "-o", str(tmp_path / "art"), "-q",
                     "--input-shape", "input=2,3,32,32"]) == 0
    assert EdgeModel.load(tmp_path / "art").inputs[0]["shape"] == [2, 3, 32, 32]


_DECLARED = [{"name": "x", "shape": ["batch", 3, None, 0], "dtype": "float32"}]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-3, 5), st.booleans(), st.text(max_size=2),
                          st.none(), st.floats(allow_nan=False)), max_size=5))
def test_input_shapes_are_taken_only_when_they_are_static_and_fit(shape):
    """Any value for input_shapes: a static shape of the input's rank, or a CompileError
    naming the input, never another exception."""
    try:
        (got,) = compiler._static_inputs(_DECLARED, {"x": shape}, None)
    except CompileError as exc:
        assert "'x'" in str(exc)
    else:
        assert got["shape"] == shape and len(shape) == 4
        assert all(type(d) is int and d >= 0 for d in shape)
