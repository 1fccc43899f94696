"""ONNX's backend test cases for a set of operators, through the ONNX backend
(:mod:`neo_edge_runtime.compile.onnx_backend`): each case is compiled for this machine,
run on its reference inputs and checked as ONNX's runner checks it
(``Runner.assert_similar_outputs`` with the case's rtol/atol).

The node cases are those ``onnx.backend.test.case.node.collect_testcases`` yields for
:data:`OPS`, taken from the modules that define them (collecting all 1,884 takes
seconds), at most :data:`PER_OPERATOR` per operator spread over its variants; the conv1d
cases are the first ``pytorch-converted`` models ``test_Conv1d*``. A case
that fails is listed in :data:`XFAIL` with the reason and the exception it raises; the
xfails are strict, so a case that starts passing fails the run until it is taken off the
list. ``make conformance`` runs every case (``benchmarks/conformance.py``).
"""

from __future__ import annotations

import glob
import importlib
import os
import re
import warnings

import pytest

#: LSTM, GRU and RNN are not here: tests/edge_runtime/test_rnn.py runs all 18 of their ONNX
#: cases through the same backend in one compile.
OPS = ("LayerNormalization", "Softmax", "Gelu", "MatMul", "Conv", "ConvTranspose", "Resize",
       "Upsample", "Constant", "ConstantOfShape")
#: The onnx.backend.test.case.node modules that define the cases of OPS.
NODE_MODULES = ("layernormalization", "softmax", "gelu", "matmul", "conv", "convtranspose",
                "resize", "upsample", "constant", "constantofshape")
CONV1D_MODELS = "pytorch-converted/test_Conv1d*"
#: Cases per operator in the test suite (each is a compile): spread over its cases.
PER_OPERATOR = 6
#: ONNX's Conv1d models in the test suite.
CONV1D_LIMIT = 4

#: (case name pattern, exception the case raises, why). Patterns match whole names.
XFAIL: list[tuple[str, str, str]] = [
    (r"test_resize_downsample_scales_cubic", "AssertionError",
     "TVM's importer turns the scales into sizes and resizes by size / input size, not by "
     "the scale ONNX's coordinate transform uses (0.8 of 4 rows is 3, a scale of 0.75)"),
    (r"test_resize_\w+_half_pixel_symmetric", "UnsupportedModelError",
     "TVM has no half_pixel_symmetric coordinate transformation"),
    (r"test_resize_\w+(_not_larger|_not_smaller|_axes_\d_\d)", "UnsupportedModelError",
     "TVM's importer reads neither Resize's axes nor keep_aspect_ratio_policy"),
    (r"test_upsample_nearest", "AssertionError",
     "TVM's Upsample converter rounds to the nearest source pixel where ONNX floors"),
]


def _op_types(cases) -> dict[str, str]:
    """Case name to the operator it tests; an ``_expanded`` case (the operator's
    function body) counts for its unexpanded twin's operator."""
    ops = {c.name: c.model.graph.node[0].op_type for c in cases if len(c.model.graph.node) == 1}
    for c in cases:
        if c.name not in ops:
            ops[c.name] = ops.get(re.sub(r"_expanded(_ver\d+)?$", "", c.name), "")
    return ops


def _node_cases() -> list:
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in NODE_MODULES:
            importlib.import_module(f"{node.__name__}.{name}")
    cases = [c for c in node._NodeTestCases if c.data_sets]
    ops = _op_types(cases)
    chosen: list = []
    for op in OPS:
        mine = sorted((c for c in cases if ops[c.name] == op), key=lambda c: c.name)
        # Every PER_OPERATOR-th case, spread over the operator's list (the names group the
        # variants), so the test suite stays within its time; make conformance runs all.
        step = max(1, -(-len(mine) // PER_OPERATOR))
        chosen.extend(mine[::step])
    return chosen


def _conv1d_cases() -> list:
    from onnx.backend.test.loader import DATA_DIR

    return sorted(glob.glob(os.path.join(DATA_DIR, CONV1D_MODELS)))[:CONV1D_LIMIT]


def _exception(name: str) -> type:
    if name == "AssertionError":
        return AssertionError
    from neo_edge_runtime import errors
    from neo_edge_runtime.compile import onnx_backend  # imports no TVM

    return getattr(onnx_backend, name, None) or getattr(errors, name)


def _marks(name: str) -> list:
    for pattern, raises, why in XFAIL:
        if re.fullmatch(pattern, name):
            return [pytest.mark.xfail(strict=True, raises=_exception(raises), reason=why)]
    return []


def _params() -> list:
    params = [pytest.param(("node", c), id=c.name, marks=_marks(c.name)) for c in _node_cases()]
    for folder in _conv1d_cases():
        name = os.path.basename(folder)
        params.append(pytest.param(("model", folder), id=name, marks=_marks(name)))
    return params


def _model_case(folder: str):
    """(model, [(inputs, expected outputs)], rtol, atol) of a model folder."""
    import onnx
    from onnx import numpy_helper

    def tensors(data_dir: str, prefix: str) -> list:
        files = sorted(glob.glob(os.path.join(data_dir, f"{prefix}_*.pb")),
                       key=lambda f: int(re.search(r"_(\d+)\.pb$", f).group(1)))
        out = []
        for f in files:
            t = onnx.TensorProto()
            with open(f, "rb") as fh:
                t.ParseFromString(fh.read())
            out.append(numpy_helper.to_array(t))
        return out

    model = onnx.load(os.path.join(folder, "model.onnx"))
    data = [(tensors(d, "input"), tensors(d, "output"))
            for d in sorted(glob.glob(os.path.join(folder, "test_data_set*")))]
    return model, data, 1e-3, 1e-7


@pytest.mark.parametrize("case", _params())
def test_case_matches_reference(case):
    from onnx.backend.test.runner import Runner, _normalize_tensor

    from neo_edge_runtime.compile import onnx_backend

    kind, value = case
    if kind == "node":
        model, data, rtol, atol = value.model, value.data_sets, value.rtol, value.atol
    else:
        model, data, rtol, atol = _model_case(value)
    assert data, "the case has no reference data"
    rep = onnx_backend.prepare(model, "CPU")
    try:
        for inputs, expected in data:
            outputs = rep.run([_normalize_tensor(x) for x in inputs])
            Runner.assert_similar_outputs([_normalize_tensor(x) for x in expected], outputs,
                                          rtol=rtol, atol=atol)
    finally:
        rep.close()


# ---------------------------------------------------------------------------------------
# The backend's own contract


def _two_output_model(batch):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])
    # Declared in the opposite order to the nodes that compute them.
    outs = [helper.make_tensor_value_info("neg", TensorProto.FLOAT, [batch, 3]),
            helper.make_tensor_value_info("relu", TensorProto.FLOAT, [batch, 3])]
    nodes = [helper.make_node("Relu", ["x"], ["relu"]), helper.make_node("Neg", ["x"], ["neg"])]
    return helper.make_model(helper.make_graph(nodes, "two", [x], outs),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_supports_cpu_only():
    from neo_edge_runtime.compile import onnx_backend

    assert onnx_backend.supports_device("CPU")
    assert not onnx_backend.supports_device("CUDA")


def test_run_returns_outputs_in_graph_order():
    import numpy as np

    from neo_edge_runtime.compile import onnx_backend

    x = np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)
    neg, relu = onnx_backend.run_model(_two_output_model(1), [x])
    np.testing.assert_array_equal(neg, -x)
    np.testing.assert_array_equal(relu, np.maximum(x, 0))


def test_dynamic_input_is_compiled_for_the_shapes_run():
    import numpy as np

    from neo_edge_runtime.compile import onnx_backend

    rep = onnx_backend.prepare(_two_output_model("batch"))
    try:
        for batch in (2, 5):
            x = np.arange(batch * 3, dtype=np.float32).reshape(batch, 3) - 4
            neg, _ = rep.run({"x": x})
            np.testing.assert_array_equal(neg, -x)
    finally:
        rep.close()


def test_run_node_runs_one_operator():
    import numpy as np
    from onnx import helper

    from neo_edge_runtime.compile import onnx_backend

    x = np.array([[1.0, -2.0]], dtype=np.float32)
    (y,) = onnx_backend.run_node(helper.make_node("Abs", ["x"], ["y"]), [x],
                                 outputs_info=[(np.float32, (1, 2))])
    np.testing.assert_array_equal(y, np.abs(x))


def test_fails_when_tvm_has_no_converter():
    from onnx import TensorProto, helper

    from neo_edge_runtime.compile import onnx_backend

    # Det (a matrix determinant): an operator TVM 0.27's importer has no converter for.
    node = helper.make_node("Det", ["X"], ["Y"])
    graph = helper.make_graph(
        [node], "det",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(onnx_backend.UnsupportedModelError, match="Det") as exc:
        onnx_backend.prepare(model)
    assert exc.value.stage == "import"
