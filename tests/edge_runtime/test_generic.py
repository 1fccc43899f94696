"""The rewrites and default schedules for operators the templates do not name
(:mod:`neo_edge_runtime.compile.generic`): each computes what TVM's unscheduled kernel
or ONNX Runtime computes.

The corpus tests (test_corpus.py) run the same code on models PyTorch's exporter wrote
(the sensor CNN's Conv1d, MobileNetV3's hardswish); these cases cover the attributes the
corpus does not (strides, dilations, uneven padding, groups) at sizes that compile in
seconds.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

tvm = pytest.importorskip("tvm")

from neo_edge_runtime import EdgeModel, compile_model  # noqa: E402
from neo_edge_runtime.compile import compiler, generic  # noqa: E402
from neo_edge_runtime.compile.schedules import vector_config  # noqa: E402
from neo_edge_runtime.targets import resolve  # noqa: E402


@pytest.fixture(scope="module")
def target():
    return tvm.target.Target(compiler._tvm_target(resolve("host")))


def _kernels():
    from tvm import te, topi

    def matmul(m, k, n):
        x, w, b = te.placeholder((m, k)), te.placeholder((k, n)), te.placeholder((n,))
        return [x, w, b, topi.nn.relu(topi.add(topi.matmul(x, w), b))]

    def batch_matmul(b, m, k, n):  # attention scores: columns no vector divides
        x, y = te.placeholder((b, m, k)), te.placeholder((b, k, n))
        r = te.reduce_axis((0, k))
        return [x, y, topi.multiply(te.compute(
            (b, m, n), lambda i, j, c: te.sum(x[i, j, r] * y[i, r, c], axis=r)), 0.125)]

    def linear_3d(m, k, n):  # [tokens, 1, features], as a transformer's layers write it
        x, w, b = te.placeholder((m, 1, k)), te.placeholder((k, n)), te.placeholder((n,))
        r = te.reduce_axis((0, k))
        y = te.compute((m, 1, n), lambda i, j, c: te.sum(x[i, j, r] * w[r, c], axis=r))
        return [x, w, b, topi.add(y, b)]

    def gates(k, n):  # a GRU step: the product's two halves combined (no per-tile epilogue)
        x, w = te.placeholder((1, k)), te.placeholder((k, 2 * n))
        y = topi.matmul(x, w)
        return [x, w, te.compute((1, n), lambda i, j: topi.sigmoid(y)[i, j] * y[i, j + n])]

    def squeeze_excitation(pixels, k, c):  # x * sigmoid(pooled @ w + b), broadcast
        p, w, b = te.placeholder((1, k)), te.placeholder((k, c)), te.placeholder((c,))
        x = te.placeholder((pixels, c))
        scale = topi.sigmoid(topi.add(topi.matmul(p, w), b))
        return [p, w, b, x, te.compute((pixels, c), lambda i, j: x[i, j] * scale[0, j])]

    def hardswish(shape):
        x = te.placeholder(shape)
        return [x, topi.multiply(x, topi.divide(
            topi.minimum(topi.maximum(topi.add(x, 3.0), 0.0), 6.0), 6.0))]

    def transpose(shape, axes):
        x = te.placeholder(shape)
        return [x, topi.transpose(x, axes)]

    def broadcast_add(shape):
        x, b = te.placeholder(shape), te.placeholder((shape[-1],))
        return [x, b, topi.add(x, b)]

    def mean(shape, axes):
        x = te.placeholder(shape)
        return [x, topi.divide(topi.sum(x, axis=axes, keepdims=True),
                               float(np.prod([shape[a] for a in axes])))]

    def softmax(shape, axis=-1):
        x = te.placeholder(shape)
        return [x, topi.nn.softmax(x, axis=axis)]

    def layer_norm(shape):
        x, g, b = te.placeholder(shape), te.placeholder(shape[-1:]), te.placeholder(shape[-1:])
        return [x, g, b, topi.nn.layer_norm(x, g, b, axis=[-1])]

    return {
        "gemv 1x256x1000": matmul(1, 256, 1000),
        "matmul with tails 5x7x13": matmul(5, 7, 13),
        "matmul 12x33x48": matmul(12, 33, 48),
        "matmul with 197 columns, padded": matmul(197, 64, 197),
        "batch matmul 3x197x64x197, padded": batch_matmul(3, 197, 64, 197),
        "probabilities @ values 3x197x197x64, padded": batch_matmul(3, 197, 197, 64),
        "matmul 37 columns, padded": matmul(20, 24, 37),
        "matmul 13 rows, padded": matmul(13, 32, 48),
        "linear layer over 13 tokens, padded": linear_3d(13, 32, 48),
        "gru gates 128x256": gates(128, 128),
        "squeeze-excitation scale 49x1152": squeeze_excitation(49, 48, 1152),
        "hardswish nhwc": hardswish((1, 12, 12, 24)),
        "hardswish short last axis": hardswish((1, 8, 8, 3)),
        "transpose nchw to nhwc": transpose((1, 3, 128, 128), (0, 2, 3, 1)),
        "broadcast add": broadcast_add((1, 10, 10, 40)),
        "global mean nhwc": mean((1, 7, 7, 96), (1, 2)),
        "mean over the last axis": mean((4, 50), (1,)),
        "softmax": softmax((3, 37)),
        "softmax over rows of whole vectors": softmax((13, 64)),
        "softmax over channels": softmax((2, 40, 3, 3), axis=1),
        "layer norm over rows of whole vectors": layer_norm((1, 13, 192)),
    }


KERNELS = _kernels()
#: Fewer elements than threads or vectors are worth splitting for: scheduled as written.
TOO_SMALL_TO_SPLIT = {"matmul with tails 5x7x13", "mean over the last axis"}


@pytest.mark.parametrize("name", list(KERNELS))
def test_default_schedule_computes_what_the_unscheduled_kernel_does(name, target):
    from tvm import te

    tensors = KERNELS[name]
    func = te.create_prim_func(tensors)
    scheduled = generic.default_schedule(func, vector_config(target)[0], target)
    assert scheduled is not None, f"no default schedule for {name}"
    assert int(scheduled.attrs["tirx.is_scheduled"]) == 1
    if name not in TOO_SMALL_TO_SPLIT:
        text = scheduled.script()
        assert "T.vectorized" in text or "T.parallel" in text, text
    if "padded" in name:  # computed on whole vectors of zero-padded columns
        text = scheduled.script()
        assert "_pad = T.sblock_alloc_buffer" in text and "T.vectorized" in text, text

    rng = np.random.default_rng(0)
    shapes = [[int(d) for d in t.shape] for t in tensors]
    inputs = [rng.standard_normal(s).astype("float32") for s in shapes[:-1]]
    results = []
    for f in (func, scheduled):
        lib = tvm.compile(f, target=target)
        args = [tvm.runtime.tensor(a) for a in inputs] + \
            [tvm.runtime.tensor(np.zeros(shapes[-1], "float32"))]
        lib(*args)
        results.append(args[-1].numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-5)


def test_default_schedules_leave_scheduled_kernels_alone(target):
    from tvm import te

    func = te.create_prim_func(KERNELS["broadcast add"]).with_attr("tirx.is_scheduled", True)
    mod = tvm.IRModule({"k": func})
    out = generic.schedule_unscheduled(mod, target)
    assert out["k"].same_as(func)


def _onnx_model(tmp_path, name, nodes, x_shape, y_shape, inits=(), opset=17):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _matches_onnxruntime(tmp_path, path, x_shape):
    passes = []
    artifact = compile_model(path, "host", tmp_path / "artifact", log=passes.append)
    manifest = EdgeModel.load(artifact).manifest
    # Every pass applied: none skipped (a skipped pass would leave the stock path).
    assert "optimizations" not in manifest, manifest.get("optimizations")
    x = np.random.default_rng(1).standard_normal(x_shape).astype("float32")
    got = EdgeModel.load(artifact).predict(x)["y"]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)


CONV1D = [  # (cin, cout, kernel, stride, dilation, pads, groups, length)
    (6, 16, 5, 1, 1, (2, 2), 1, 40),
    (8, 24, 3, 2, 1, (1, 0), 1, 33),
    (8, 16, 3, 1, 2, (2, 2), 2, 30),
    (16, 16, 5, 1, 1, (2, 2), 16, 24),  # depthwise
]


@pytest.mark.parametrize("cin,cout,k,stride,dilation,pads,groups,length", CONV1D)
def test_conv1d_runs_as_a_2d_convolution_and_matches_onnxruntime(
        tmp_path, cin, cout, k, stride, dilation, pads, groups, length):
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(
        (rng.standard_normal((cout, cin // groups, k)) * 0.3).astype("float32"), "w")
    b = numpy_helper.from_array(rng.standard_normal(cout).astype("float32"), "b")
    out_len = (length + sum(pads) - dilation * (k - 1) - 1) // stride + 1
    pooled = out_len // 2
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k],
                              strides=[stride], dilations=[dilation], pads=list(pads),
                              group=groups),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2], strides=[2])]
    path = _onnx_model(tmp_path, "conv1d", nodes, [1, cin, length], [1, cout, pooled],
                       [w, b])

    mod, *_ = compiler._import(path, "ONNX", None, None)
    rewritten = generic.conv1d_as_conv2d(mod)
    text = rewritten.script()
    assert "conv1d" not in text and "max_pool1d" not in text and "R.nn.conv2d" in text
    _matches_onnxruntime(tmp_path, path, [1, cin, length])


CONV_TRANSPOSE = [  # (cin, cout, kernel, strides, pads, output_padding, groups, size, direct)
    (16, 8, (2, 2), (2, 2), (0, 0, 0, 0), (0, 0), 1, (7, 9), True),  # U-Net upsampling
    (8, 4, (4, 4), (2, 2), (1, 1, 1, 1), (0, 0), 1, (6, 6), True),  # DCGAN generator
    (6, 5, (3, 2), (3, 1), (1, 0, 2, 1), (0, 0), 1, (5, 7), True),  # uneven pads
    (4, 6, (3, 3), (1, 1), (1, 1, 1, 1), (0, 0), 1, (8, 8), True),  # stride 1
    (8, 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, (5, 5), False),  # 3 not a multiple of 2
    (8, 8, (2, 2), (2, 2), (0, 0, 0, 0), (1, 0), 1, (5, 5), False),  # output_padding
    (8, 8, (2, 2), (2, 2), (0, 0, 0, 0), (0, 0), 2, (5, 5), False),  # grouped
]


@pytest.mark.parametrize("cin,cout,k,strides,pads,out_pad,groups,size,direct", CONV_TRANSPOSE)
def test_conv_transpose_runs_as_a_convolution_and_matches_onnxruntime(
        tmp_path, cin, cout, k, strides, pads, out_pad, groups, size, direct):
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(
        (rng.standard_normal((cin, cout // groups, *k)) * 0.3).astype("float32"), "w")
    b = numpy_helper.from_array(rng.standard_normal(cout).astype("float32"), "b")
    # The ONNX specification's output shape.
    out = [s * (n - 1) + op + kk - lo - hi for s, n, op, kk, lo, hi
           in zip(strides, size, out_pad, k, pads[:2], pads[2:])]
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=list(k),
                              strides=list(strides), pads=list(pads),
                              output_padding=list(out_pad), group=groups)]
    path = _onnx_model(tmp_path, "deconv", nodes, [1, cin, *size], [1, cout, *out], [w, b])

    mod, *_ = compiler._import(path, "ONNX", None, None)
    text = generic.conv_transpose_as_conv(mod).script()
    assert ("conv2d_transpose" not in text) == direct, text
    _matches_onnxruntime(tmp_path, path, [1, cin, *size])


def test_average_pool1d_runs_as_a_2d_pool_and_matches_onnxruntime(tmp_path):
    from onnx import helper

    nodes = [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3], strides=[2],
                              pads=[1, 1], count_include_pad=0)]
    path = _onnx_model(tmp_path, "avgpool1d", nodes, [1, 8, 21], [1, 8, 11])
    mod, *_ = compiler._import(path, "ONNX", None, None)
    assert "avg_pool1d" not in generic.conv1d_as_conv2d(mod).script()
    _matches_onnxruntime(tmp_path, path, [1, 8, 21])


def test_hardswish_and_hardsigmoid_stay_channels_last_and_match_onnxruntime(tmp_path,
                                                                            target):
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((16, 8, 3, 3)) * 0.3)
                                .astype("float32"), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c"], ["h"]),
             helper.make_node("HardSigmoid", ["h"], ["y"], alpha=0.2, beta=0.4)]
    path = _onnx_model(tmp_path, "hardswish", nodes, [1, 8, 12, 12], [1, 16, 12, 12], [w])

    mod, *_ = compiler._import(path, "ONNX", None, None)
    last = compiler._channels_last(mod, target)
    text = last.script()
    assert "R.clip" not in text
    # One transpose in (the input), one out (the output): none around the activations.
    assert text.count("R.permute_dims") == 3, text  # input, weights, output
    _matches_onnxruntime(tmp_path, path, [1, 8, 12, 12])


def test_unit_permutes_become_reshapes_and_others_stay():
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1, 5, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.permute_dims(x, [0, 2, 1, 3]))   # moves a size-1 axis
            b = bb.emit(relax.op.permute_dims(a, [0, 3, 2, 1]))   # a real transpose
            out = bb.emit_output(b)
        bb.emit_func_output(out)
    text = generic.unit_permutes_as_reshapes(bb.get()).script()
    assert text.count("R.reshape") == 1 and text.count("R.permute_dims") == 1, text


def test_sigmoid_tanh_erf_and_gelu_use_fast_math_and_match_onnxruntime(tmp_path, target):
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((16, 8, 1, 1)) * 2.0)
                                .astype("float32"), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Mul", ["c", "s"], ["silu"]),  # SiLU, as EfficientNet's
             helper.make_node("Tanh", ["silu"], ["t"]),
             helper.make_node("Erf", ["c"], ["e"]),
             helper.make_node("Gelu", ["c"], ["g"]),  # a transformer's MLP
             helper.make_node("Add", ["t", "e"], ["te"]),
             helper.make_node("Add", ["te", "g"], ["y"])]
    path = _onnx_model(tmp_path, "fast_math", nodes, [1, 8, 10, 10], [1, 16, 10, 10], [w],
                       opset=20)

    mod, *_ = compiler._import(path, "ONNX", None, None)
    text = compiler._channels_last(mod, target).script()
    assert "R.sigmoid" not in text and "R.tanh" not in text and "R.erf" not in text
    assert "R.nn.gelu" not in text
    assert all(f"fast_{f}" in text for f in ("sigmoid", "tanh", "erf", "gelu")), text
    _matches_onnxruntime(tmp_path, path, [1, 8, 10, 10])


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "Erf", "Gelu"])
def test_fast_math_keeps_nan_and_infinities(tmp_path, op):
    """The approximations clamp their input (fast_erf(NaN) was 1): NaN must stay NaN and
    the infinities reach the limits, as in ONNX Runtime."""
    from onnx import helper

    path = _onnx_model(tmp_path, op, [helper.make_node(op, ["x"], ["y"])], [1, 64], [1, 64], [],
                       opset=20)  # Gelu's first
    x = np.linspace(-30, 30, 64).astype(np.float32).reshape(1, 64)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    art = compile_model(path, "host", tmp_path / "art")
    got = EdgeModel.load(art).predict(x)["y"]
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)  # NaN where NaN, else close


def test_fast_softmax_keeps_masked_entries_at_zero_and_nan_as_nan(tmp_path):
    """Softmax through fast_exp: an attention mask's -inf gives exactly 0, a NaN still
    makes its row NaN, and the rest matches ONNX Runtime."""
    from onnx import helper

    path = _onnx_model(tmp_path, "softmax", [helper.make_node("Softmax", ["x"], ["y"])],
                       [6, 40], [6, 40], [])
    mod, *_ = compiler._import(path, "ONNX", None, None)
    assert "R.nn.softmax" not in generic.fast_math(mod).script()
    x = np.random.default_rng(3).standard_normal((6, 40)).astype(np.float32) * 30
    x[0, ::3] = -np.inf  # masked
    x[1, 5] = np.nan
    x[2, :] = np.linspace(-200, 0, 40)  # down to exp(-200): below float32's range
    x[4, 7] = np.inf  # exp(inf - inf): NaN, in ONNX Runtime too
    x[5, :] = -np.inf  # all masked: the same
    art = compile_model(path, "host", tmp_path / "art")
    got = EdgeModel.load(art).predict(x)["y"]
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert (got[0, ::3] == 0).all() and np.isnan(got[1]).all()
    assert np.isnan(expected[4]).all() and np.isnan(expected[5]).all()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", [k for k in KERNELS if "rows of whole vectors" in k])
def test_reductions_along_rows_accumulate_whole_vectors(name, target):
    """A layer norm's sums, a softmax's max and sum: each row accumulates a vector of
    partial results (rfactor), not one scalar (a chain of dependent adds, 9x slower on
    a ViT's layer norm)."""
    from tvm import te

    func = te.create_prim_func(KERNELS[name])
    text = generic.default_schedule(func, vector_config(target)[0], target).script()
    partials = [line for line in text.splitlines() if "_rf_update" in line]
    assert len(partials) == 2, text
    assert text.count("_rf_update\"):") == 2 and "T.vectorized" in text, text


def test_a_product_fills_the_register_tile_the_target_has_registers_for(target):
    """6 rows x 4 vectors of accumulators with 32 vector registers (AVX-512), 4 x 3 with
    16 (AVX2): a ViT's 197 tokens are padded to whole tiles of rows."""
    from tvm import te

    lanes, registers = vector_config(target)
    rows, vectors = generic._TILES[32 if registers >= 32 else 16]
    func = te.create_prim_func(_linear(197, 192, 4 * vectors * lanes))
    text = generic.default_schedule(func, lanes, target).script()
    assert f"T.unroll({rows})" in text and f"T.unroll({vectors})" in text, text
    assert f"T.vectorized({lanes})" in text, text


def test_a_one_row_product_takes_a_full_tile_of_half_vectors(target):
    """A classifier's one image (1 x 1280 @ 1280 x 1000): 1000 columns are 125 half
    vectors of AVX-512, and a tile of one half vector (the divisor of 125 up to the 4
    vectors of a tile) read its weights one 32-byte piece per row of 4000 bytes; five
    half vectors fill what the tile's 4 vectors would."""
    from tvm import te

    lanes, registers = vector_config(target)
    if lanes != 16:
        pytest.skip("AVX-512's 16 lanes: 1000 columns are whole vectors of 8")
    func = te.create_prim_func(KERNELS["gemv 1x256x1000"])
    text = generic.default_schedule(func, lanes, target).script()
    assert "T.unroll(5)" in text and "T.vectorized(8)" in text, text


def test_attention_probabilities_are_padded_along_the_reduction_for_whole_tiles(target):
    """probabilities @ values (197 x 197 @ 197 x 64): rows padded to whole tiles, and so
    the copy of the rows' operand vectorizes, its 197 columns (the reduction) to whole
    vectors; unpadded, one row per tile ran 1.5x slower."""
    from tvm import te

    lanes = vector_config(target)[0]
    func = te.create_prim_func(KERNELS["probabilities @ values 3x197x197x64, padded"])
    text = generic.default_schedule(func, lanes, target).script()
    padded_depth = 197 + -197 % lanes
    assert f"T.axis.reduce({padded_depth}" in text or f", {padded_depth}))" in text, text


def test_a_broadcast_epilogue_is_computed_once_per_product_element(target):
    """Squeeze-and-excitation: the bias and sigmoid after the product are computed per
    tile, once per channel, and the broadcast product with the feature map reads them;
    inlined into it, they were computed for every element of the map."""
    from tvm import s_tir, te

    func = te.create_prim_func(KERNELS["squeeze-excitation scale 49x1152"])
    sch = s_tir.Schedule(generic.default_schedule(func, vector_config(target)[0], target))
    output = func.params[-1]
    last, = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))
             if sch.get(b).writes[0].source.same_as(output)]
    product = last.body.value
    assert isinstance(product, tvm.ir.prim.expr.Mul), last
    assert all(isinstance(v, tvm.ir.expr.TensorLoad) for v in (product.a, product.b)), last


def _linear(m, k, n):
    from tvm import te, topi

    x, w, b = te.placeholder((1, m, k)), te.placeholder((k, n)), te.placeholder((n,))
    r = te.reduce_axis((0, k))
    y = te.compute((1, m, n), lambda i, j, c: te.sum(x[i, j, r] * w[r, c], axis=r))
    return [x, w, b, topi.add(y, b)]


@pytest.mark.parametrize("k,n,parallel", [(128, 256, False), (256, 1024, True)])
def test_small_products_run_on_one_thread(target, k, n, parallel):
    """A GRU step's product (128x256) ran 2.4x slower split over two threads than on
    one; from about 2^16 multiply-adds the split pays (PARALLEL_MIN_MACS)."""
    from tvm import te

    func = te.create_prim_func(_gemv(k, n))
    text = generic.default_schedule(func, vector_config(target)[0], target).script()
    assert ("T.parallel" in text) == parallel and "T.vectorized" in text, text


@pytest.mark.parametrize("shape,parallel", [((1, 10), False), ((64, 1024), True)])
def test_small_reductions_in_sequence_run_on_one_thread(target, shape, parallel):
    """A classifier's softmax over 10 scores took 0.87 us on two threads and 0.04 us on
    one (waking the pool for one row); TVM's dlight rule parallelizes whatever it is
    given, so below PARALLEL_MIN_WORK its parallel loop is dropped."""
    from tvm import te, topi

    x = te.placeholder(shape)
    func = te.create_prim_func([x, topi.nn.softmax(x)])
    text = generic.default_schedule(func, vector_config(target)[0], target).script()
    assert ("T.parallel" in text) == parallel, text


def _gemv(k, n):
    from tvm import te, topi

    x, w = te.placeholder((1, k)), te.placeholder((k, n))
    return [x, w, topi.matmul(x, w)]


@pytest.mark.parametrize("k,padded", [(32, True), (13, False)])
def test_rows_are_padded_only_where_the_copy_vectorizes(target, k, padded):
    """13 rows take no register tile of 4: they are padded to 16, which copies the rows'
    operand; along a reduction of 13 that copy runs scalar and costs more than the tile
    saves (attention's probabilities @ V: 174 us padded, 129 us not)."""
    from tvm import te

    x, y = te.placeholder((13, k)), te.placeholder((k, 32))
    r = te.reduce_axis((0, k))
    func = te.create_prim_func([x, y, te.compute((13, 32), lambda i, c: te.sum(
        x[i, r] * y[r, c], axis=r))])
    text = generic.default_schedule(func, vector_config(target)[0], target).script()
    assert ("_pad = T.sblock_alloc_buffer" in text) == padded, text
