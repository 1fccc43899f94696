"""ONNX's recurrent operators (LSTM, GRU, RNN), which TVM's ONNX importer lacks and
:mod:`neo_edge_runtime.compile.rnn` converts, and recurrent PyTorch models on both of the
compiler's PyTorch paths (ONNX export and ``torch.export``).

Checked against third parties: ONNX's own backend node test cases (their inputs and
reference outputs, compared as ONNX's runner compares them), ONNX Runtime on what those
cases leave out (clip, every activation function, ``linear_before_reset``,
``input_forget``, per-sequence lengths, ``layout`` 1), and PyTorch itself for a small
keyword-spotting network exported by both of PyTorch's ONNX exporters and by
``torch.export``. Shapes are tiny and sequences short: each compile unrolls every time
step.
"""

from __future__ import annotations

import importlib
import json
import threading
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from neo_edge_runtime import CompileError, EdgeModel, compile_model
from neo_edge_runtime.artifact import MANIFEST
from neo_edge_runtime.compile import compiler, rnn

OPS = ("LSTM", "GRU", "RNN")


def manifest(folder) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def ort_session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


# -- ONNX's backend node test cases -----------------------------------------------------


def _onnx_cases() -> list:
    """ONNX's node test cases of LSTM, GRU and RNN (test_lstm_*, test_gru_*, test_rnn_*,
    test_simple_rnn_*), from the modules that define them."""
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("lstm", "gru", "rnn"):
            importlib.import_module(f"{node.__name__}.{name}")
    return sorted((c for c in node._NodeTestCases
                   if c.data_sets and c.model.graph.node[0].op_type in OPS),
                  key=lambda c: c.name)


CASES = _onnx_cases()


def _merged(cases) -> onnx.ModelProto:
    """One model holding every case's node, its names prefixed with the case's index:
    all of them compile at once, instead of one compile per case."""
    nodes, inputs, outputs, inits = [], [], [], []
    for k, case in enumerate(cases):
        g = case.model.graph

        def rename(name: str) -> str:
            return f"c{k}_{name}" if name else ""

        for n in g.node:
            m = onnx.NodeProto()
            m.CopyFrom(n)
            m.name = rename(n.name or n.op_type)
            m.input[:] = [rename(i) for i in n.input]
            m.output[:] = [rename(o) for o in n.output]
            nodes.append(m)
        for src, dst in ((g.input, inputs), (g.output, outputs), (g.initializer, inits)):
            for v in src:
                w = type(v)()
                w.CopyFrom(v)
                w.name = rename(v.name)
                dst.append(w)
    opset = max(op.version for c in cases for op in c.model.opset_import if op.domain == "")
    model = helper.make_model(helper.make_graph(nodes, "onnx_rnn_cases", inputs, outputs,
                                                inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = max(c.model.ir_version for c in cases)
    return model


@pytest.fixture(scope="module")
def onnx_case_outputs():
    """Every case's outputs (name without prefix to array), from one compile of the
    merged model through the ONNX backend; ``None`` if it did not compile."""
    from onnx.backend.test.runner import _normalize_tensor

    from neo_edge_runtime.compile import onnx_backend

    model = _merged(CASES)
    rep = onnx_backend.prepare(model, "CPU")
    try:
        feeds = {}
        for k, case in enumerate(CASES):
            (inputs, _), = case.data_sets  # each case has one data set
            names = [vi.name for vi in case.model.graph.input]
            feeds.update({f"c{k}_{n}": _normalize_tensor(x) for n, x in zip(names, inputs)})
        got = dict(zip(rep.output_names, rep.run(feeds)))
    finally:
        rep.close()
    return got


def test_onnx_cases_cover_every_operator_and_option():
    names = {c.name for c in CASES}
    # The ops' cases as of onnx 1.23: forward, reverse, bidirectional, layout 1, biases,
    # peepholes, initial states and sequence_lens among them.
    assert {"test_lstm_bidirectional", "test_lstm_with_peepholes", "test_lstm_batchwise",
            "test_gru_reverse", "test_gru_seq_length", "test_rnn_seq_length",
            "test_simple_rnn_bidirectional"} <= names
    assert len(CASES) >= 18


@pytest.mark.parametrize("k", range(len(CASES)), ids=[c.name for c in CASES])
def test_onnx_case_matches_its_reference_outputs(k, onnx_case_outputs):
    from onnx.backend.test.runner import Runner, _normalize_tensor

    case = CASES[k]
    (_, expected), = case.data_sets
    names = [vo.name for vo in case.model.graph.output]
    got = [onnx_case_outputs[f"c{k}_{n}"] for n in names]
    Runner.assert_similar_outputs([_normalize_tensor(x) for x in expected], got,
                                  rtol=case.rtol, atol=case.atol)


# -- What ONNX's cases leave out, against ONNX Runtime ----------------------------------

STEPS, BATCH, INPUT, HIDDEN = 5, 3, 3, 2
#: Per-sequence lengths, a run-time input: full, part, one step.
LENGTHS = np.array([5, 2, 1], dtype=np.int32)
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}

#: name: (operator, attributes, optional inputs given). ONNX Runtime's CPU kernels refuse
#: layout 1, so a layout-1 variant is checked against ONNX Runtime's result for the same
#: node in layout 0, transposed.
VARIANTS = {
    "lstm_bidirectional_peepholes_clip_initial_states": (
        "LSTM", dict(direction="bidirectional", clip=0.5), {"B", "P", "h0", "c0"}),
    "lstm_reverse_input_forget_activations": (
        "LSTM", dict(direction="reverse", input_forget=1,
                     activations=["HardSigmoid", "Softsign", "Elu"],
                     activation_alpha=[0.3, 0.8], activation_beta=[0.4]), {"B"}),
    "lstm_sequence_lengths_only_y_c": (
        "LSTM", dict(direction="bidirectional"), {"B", "L", "h0", "c0", "only Y_c"}),
    "lstm_layout1_bidirectional": (
        "LSTM", dict(direction="bidirectional", layout=1), {"B", "P", "h0", "c0", "L"}),
    "gru_bidirectional_linear_before_reset": (
        "GRU", dict(direction="bidirectional", linear_before_reset=1, clip=2.0,
                    activations=["Sigmoid", "Tanh", "HardSigmoid", "ScaledTanh"],
                    activation_alpha=[0.25, 1.5], activation_beta=[0.45, 0.7]),
        {"B", "h0"}),
    "gru_reverse_sequence_lengths": ("GRU", dict(direction="reverse"), {"B", "L", "h0"}),
    "gru_linear_before_reset_no_bias": ("GRU", dict(linear_before_reset=1), set()),
    "gru_layout1_reverse": ("GRU", dict(direction="reverse", layout=1), {"B", "h0"}),
    "rnn_relu_leakyrelu": (
        "RNN", dict(direction="bidirectional", activations=["Relu", "LeakyRelu"],
                    activation_alpha=[0.2]), {"B"}),
    "rnn_affine_thresholdedrelu": (
        "RNN", dict(direction="bidirectional", activations=["Affine", "ThresholdedRelu"],
                    activation_alpha=[0.7, 0.1], activation_beta=[0.3]), {"B"}),
    "rnn_sigmoid_softplus_clip": (
        "RNN", dict(direction="bidirectional", activations=["Sigmoid", "Softplus"],
                    clip=0.4), {"B", "h0"}),
    "rnn_sequence_lengths": ("RNN", dict(), {"B", "L"}),
}


def _variant_graph(layout_for_ort: bool) -> onnx.ModelProto:
    """Every variant as one node of one model over the same X (and L); with
    ``layout_for_ort``, layout-1 variants are in layout 0 (ONNX Runtime's kernels)."""
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Transpose", ["X"], ["X_batch_major"], perm=[1, 0, 2])]
    inits, outputs = [], []
    for name, (op, attrs, extra) in VARIANTS.items():
        directions = 2 if attrs.get("direction") == "bidirectional" else 1
        gates = GATES[op]
        layout = 0 if layout_for_ort else attrs.get("layout", 0)
        attrs = {**attrs, "hidden_size": HIDDEN}
        attrs.pop("layout", None)
        if layout:
            attrs["layout"] = 1

        def weight(suffix, shape, scale=0.6):
            inits.append(numpy_helper.from_array(
                (rng.standard_normal(shape) * scale).astype(np.float32), f"{name}.{suffix}"))
            return f"{name}.{suffix}"

        def state(suffix):
            value = rng.standard_normal((directions, BATCH, HIDDEN)).astype(np.float32)
            if layout:
                value = value.transpose(1, 0, 2)
            inits.append(numpy_helper.from_array(np.ascontiguousarray(value),
                                                 f"{name}.{suffix}"))
            return f"{name}.{suffix}"

        ins = ["X_batch_major" if layout else "X",
               weight("W", (directions, gates * HIDDEN, INPUT)),
               weight("R", (directions, gates * HIDDEN, HIDDEN)),
               weight("B", (directions, 2 * gates * HIDDEN)) if "B" in extra else "",
               "L" if "L" in extra else "",
               state("h0") if "h0" in extra else ""]
        if op == "LSTM":
            ins += [state("c0") if "c0" in extra else "",
                    weight("P", (directions, 3 * HIDDEN)) if "P" in extra else ""]
        while ins[-1] == "":
            ins.pop()
        outs = [f"{name}.Y", f"{name}.Y_h"] + ([f"{name}.Y_c"] if op == "LSTM" else [])
        if "only Y_c" in extra:
            outs = ["", "", outs[2]]
        nodes.append(helper.make_node(op, ins, outs, name=name, **attrs))
        state_shape = [BATCH, directions, HIDDEN] if layout else [directions, BATCH, HIDDEN]
        for out in filter(None, outs):
            shape = ([BATCH, STEPS, directions, HIDDEN] if layout
                     else [STEPS, directions, BATCH, HIDDEN]) if out.endswith(".Y") \
                else state_shape
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes, "rnn_variants",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [STEPS, BATCH, INPUT]),
         helper.make_tensor_value_info("L", TensorProto.INT32, [BATCH])],
        outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """(our outputs, ONNX Runtime's outputs, our manifest) for :data:`VARIANTS`."""
    folder = tmp_path_factory.mktemp("rnn_variants")
    ours = _variant_graph(layout_for_ort=False)
    onnx.save(ours, folder / "variants.onnx")
    x = np.random.default_rng(12).standard_normal((STEPS, BATCH, INPUT)).astype(np.float32)
    feeds = {"X": x, "L": LENGTHS}
    art = compile_model(folder / "variants.onnx", "host", folder / "art")
    got = EdgeModel.load(art).predict(feeds)
    sess = ort_session(_variant_graph(layout_for_ort=True))
    expected = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    return got, expected, manifest(art)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_matches_onnxruntime(name, variants):
    got, expected, _ = variants
    outs = [n for n in expected if n.startswith(f"{name}.")]
    assert outs
    for out in outs:
        value = got[out]
        if VARIANTS[name][1].get("layout") == 1:  # back to layout 0
            value = value.transpose(1, 2, 0, 3) if out.endswith(".Y") \
                else value.transpose(1, 0, 2)
        np.testing.assert_allclose(value, expected[out], rtol=1e-4, atol=1e-5, err_msg=out)


def test_steps_past_a_sequence_length_output_zeros(variants):
    got, _, _ = variants
    y = got["rnn_sequence_lengths.Y"]  # [steps, 1, batch, hidden]
    for b, length in enumerate(LENGTHS):
        assert not np.any(y[length:, :, b]) and np.all(np.any(y[:length, :, b], axis=-1))


def test_every_compiler_pass_applies_to_recurrent_operators(variants):
    # TVM's ConvertLayout fails on relax.op.stack: the converters must not emit it, or
    # every model with a recurrent operator loses the compiler's layout passes.
    _, _, meta = variants
    assert "optimizations" not in meta


# -- Refusals ---------------------------------------------------------------------------


def _single_node_model(op="LSTM", hidden=2, w_rows=None, steps=4,
                       **attrs) -> onnx.ModelProto:
    rows = w_rows or GATES[op] * hidden
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
               for n, s in [("W", (dirs, rows, 3)), ("R", (dirs, rows, hidden))]]
    node = helper.make_node(op, ["X", "W", "R"], ["Y"], name="/rnn/cell", hidden_size=hidden,
                            **attrs)
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [steps, 1, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    return model


def _import(model):
    return compiler._import_onnx(model, None, None, "cell.onnx")


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_each_direction_is_one_kernel_whatever_the_sequence_length(op):
    """Each direction loops over its steps in one TIR kernel: unrolled into Relax
    operators, every step was three kernels and a dozen VM instructions more."""
    scripts = [_import(_single_node_model(op, hidden=4, steps=steps,
                                          direction="bidirectional"))[0]["main"].script()
               for steps in (4, 32)]
    assert [s.count(f"R.call_tir({op.lower()}_recurrence") for s in scripts] == [2, 2]
    assert len(scripts[0].splitlines()) == len(scripts[1].splitlines())


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_a_recurrence_compiled_for_an_nvidia_target_runs_on_the_gpu(op, tmp_path):
    """Built for CPUs the kernel binds no GPU thread, and TVM would leave it on the host,
    reading the GPU's memory from the CPU. Compiled for a GPU target (no GPU needed to
    compile), each recurrence is a CUDA kernel of the library's device code."""
    model = _single_node_model(op, hidden=4, direction="bidirectional")
    model.graph.output[0].type.tensor_type.shape.dim.extend(
        [onnx.TensorShapeProto.Dimension(dim_value=d) for d in (4, 2, 1, 4)])
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    art = compile_model(tmp_path / "m.onnx", "ml_g4dn", tmp_path / "art")
    library = next(art.glob("*.so")).read_bytes()
    name = op.lower()
    assert f"void {name}_recurrence_kernel(".encode() in library
    assert f"void {name}_recurrence1_kernel(".encode() in library


def test_fails_naming_the_node_and_an_unknown_activation():
    model = _single_node_model("GRU", activations=["Sigmoid", "Gelu"])
    with pytest.raises(CompileError, match=r"GRU node '/rnn/cell': activation 'Gelu' is not "
                                           r"one ONNX defines for GRU; expected one of Relu"):
        _import(model)


def test_fails_when_the_activations_do_not_fit_the_directions():
    model = _single_node_model("LSTM", direction="bidirectional",
                               activations=["Sigmoid", "Tanh", "Tanh"])
    with pytest.raises(CompileError, match=r"activations lists 3 functions \(Sigmoid, Tanh, "
                                           r"Tanh\); LSTM with 2 direction\(s\) takes 6"):
        _import(model)


def test_fails_when_the_weights_do_not_fit_hidden_size():
    model = _single_node_model("RNN", hidden=2, w_rows=3)
    with pytest.raises(CompileError, match=r"RNN node '/rnn/cell': W \[1, 3, 3\] and R "
                                           r"\[1, 3, 2\] do not fit hidden_size 2"):
        _import(model)


@settings(max_examples=15, deadline=None)
@given(direction=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1,
                         max_size=12).filter(
    lambda d: d not in ("forward", "reverse", "bidirectional")))
def test_fails_naming_any_other_direction(direction):
    model = _single_node_model("RNN", direction=direction)
    with pytest.raises(CompileError, match="direction must be forward, reverse or "
                                           "bidirectional; got ") as exc:
        _import(model)
    assert repr(direction) in str(exc.value)


@settings(max_examples=10, deadline=None)
@given(layout=st.integers(-2**63, 2**63 - 1).filter(lambda v: v not in (0, 1)))
def test_fails_naming_any_other_layout(layout):
    model = _single_node_model("GRU", layout=layout)
    with pytest.raises(CompileError, match=f"layout must be 0 or 1; got {layout}$"):
        _import(model)


# -- The converters are TVM's only within an import -------------------------------------


def test_tvm_importer_is_left_unchanged_outside_an_import():
    from tvm.relax.frontend.onnx import onnx_frontend

    stock = onnx_frontend._get_convert_map
    assert not set(OPS) & set(stock())
    errors = []

    def nested():
        try:
            with rnn.onnx_converters(), rnn.onnx_converters():
                assert set(OPS) <= set(onnx_frontend._get_convert_map())
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=nested) for _ in range(4)]
    with rnn.onnx_converters():
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(OPS) <= set(onnx_frontend._get_convert_map())
    assert not errors
    assert onnx_frontend._get_convert_map is stock


# -- A keyword-spotting network from PyTorch --------------------------------------------

FRAMES, MELS = 8, 10


def kws_net(torch):
    """Keyword spotting over MELS mel bins x FRAMES frames: a Conv1d front end, a GRU, a
    2-layer bidirectional LSTM, a linear head on the last frame."""
    nn = torch.nn

    class KWS(nn.Module):
        def __init__(self):
            super().__init__()
            self.front = nn.Sequential(nn.Conv1d(MELS, 8, 3, padding=1), nn.ReLU())
            self.gru = nn.GRU(8, 6, batch_first=True)
            self.lstm = nn.LSTM(6, 4, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):                      # [batch, mels, frames]
            f = self.front(x).transpose(1, 2)      # [batch, frames, channels]
            g, _ = self.gru(f)
            y, _ = self.lstm(g)
            return self.head(y[:, -1])             # the last frame

    torch.manual_seed(0)
    return KWS().eval()


@pytest.fixture(scope="module")
def torch_kws():
    torch = pytest.importorskip("torch")
    return torch, kws_net(torch)


@pytest.fixture(scope="module")
def kws_input():
    return np.random.default_rng(5).standard_normal((1, MELS, FRAMES)).astype(np.float32)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_exported_kws_model_matches_onnxruntime(dynamo, torch_kws, kws_input, tmp_path):
    torch, net = torch_kws
    if dynamo:
        pytest.importorskip("onnxscript")
    path = tmp_path / "kws.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(kws_input),), str(path), dynamo=dynamo,
                          input_names=["input"], output_names=["output"])
    ops = [n.op_type for n in onnx.load(path).graph.node]
    # Both exporters emit ONNX's recurrent operators (one LSTM per layer), not a
    # decomposition into matrix products.
    assert ops.count("GRU") == 1 and ops.count("LSTM") == 2
    art = compile_model(path, "host", tmp_path / "art")
    assert "optimizations" not in manifest(art)
    got = EdgeModel.load(art).predict(kws_input)["output"]
    expected = ort_session(onnx.load(path)).run(None, {"input": kws_input})[0]
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(got, net(torch.from_numpy(kws_input)).detach().numpy(),
                               atol=1e-3, rtol=1e-3)


def test_torch_export_kws_model_matches_pytorch(torch_kws, kws_input, tmp_path):
    # torch.export keeps aten.gru / aten.lstm, which TVM's frontend decomposes with
    # PyTorch's own decompositions; what went wrong was the head's y[:, -1]: TVM read a
    # negative select index before the tensor.
    torch, net = torch_kws
    x = torch.from_numpy(kws_input)
    path = tmp_path / "kws.pt2"
    torch.export.save(torch.export.export(net, (x,)), str(path))
    art = compile_model(path, "host", tmp_path / "art")
    got = EdgeModel.load(art).predict(kws_input)["output0"]
    np.testing.assert_allclose(got, net(x).detach().numpy(), atol=1e-3, rtol=1e-3)
    # torch's decomposition runs one product per time step: weights packed per call site
    # (RewriteLayout in the default schedule) were copied per step, 5.8x the model's.
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    assert (art / "params.bin").stat().st_size < 3 * weights


def test_torch_export_select_counts_negative_indices_from_the_end(tmp_path):
    torch = pytest.importorskip("torch")

    class Pick(torch.nn.Module):
        def forward(self, x):
            return x[:, -1], x[:, -3], x[:, 2], x.select(-1, -2)

    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    path = tmp_path / "pick.pt2"
    torch.export.save(torch.export.export(Pick(), (x,)), str(path))
    art = compile_model(path, "host", tmp_path / "art")
    got = EdgeModel.load(art).predict(x.numpy())
    for k, expected in enumerate(Pick()(x)):
        np.testing.assert_array_equal(got[f"output{k}"], expected.numpy())
