"""Winograd convolution: the transforms, which convolutions it takes, that every schedule
candidate computes the convolution, and that compiled models use it and stay exact."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from neo_edge_runtime import EdgeModel, artifact, compile_model
from neo_edge_runtime.compile import compiler, schedules, winograd
from neo_edge_runtime.targets import resolve

tvm = pytest.importorskip("tvm")


@pytest.mark.parametrize("m", winograd.TILES)
def test_transforms_compute_a_three_tap_correlation(m, rng):
    at, g, bt = winograd.matrices(m)
    for _ in range(5):
        d, w = rng.standard_normal(m + 2), rng.standard_normal(3)
        np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), np.correlate(d, w, "valid"),
                                   rtol=1e-12, atol=1e-12)


def test_an_unknown_tile_size_is_refused():
    with pytest.raises(ValueError, match="got 3"):
        winograd.matrices(3)
    sig = winograd.ConvSignature(8, 8, 16, 16, (1, 1, 1, 1))
    mod, _ = compiler._winograd_module(sig)
    with pytest.raises(ValueError, match=r"got 3 for 8x8x16->16 pad 1,1,1,1"):
        winograd.rewrite(mod, lambda s: 3)


def _conv(x_shape, w_shape, **attrs):
    from tvm import relax

    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    w = relax.Var("w", relax.TensorType(w_shape, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        out = bb.emit(relax.op.nn.conv2d(x, w, data_layout="NHWC", kernel_layout="OHWI",
                                         **attrs))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("x_shape, w_shape, attrs, expected", [
    ((1, 14, 12, 16), (32, 3, 3, 16), {"padding": 1},
     winograd.ConvSignature(14, 12, 16, 32, (1, 1, 1, 1))),
    ((1, 14, 12, 16), (32, 3, 3, 16), {"padding": (0, 1, 2, 1)},
     winograd.ConvSignature(14, 12, 16, 32, (0, 1, 2, 1))),
    ((1, 14, 14, 16), (32, 3, 3, 16), {"padding": 1, "strides": 2}, None),
    ((1, 14, 14, 16), (32, 3, 3, 16), {"padding": 2, "dilation": 2}, None),
    ((1, 14, 14, 16), (32, 3, 3, 8), {"padding": 1, "groups": 2}, None),
    ((1, 14, 14, 16), (32, 1, 1, 16), {}, None),
    ((1, 14, 14, 3), (32, 3, 3, 3), {"padding": 1}, None),     # RGB input: not worth it
    ((2, 14, 14, 16), (32, 3, 3, 16), {"padding": 1}, None),   # batch 2
])
def test_takes_3x3_stride_1_single_group_convolutions(x_shape, w_shape, attrs, expected):
    assert winograd.signatures(_conv(x_shape, w_shape, **attrs)) == \
        ([expected] if expected else [])


def test_untuned_builds_use_the_tile_that_measured_fastest_for_the_shape():
    def tile(h, c, k, lanes=16):
        return winograd.default_tile(winograd.ConvSignature(h, h, c, k, (1,) * 4), lanes)

    assert tile(56, 64, 64) == 4 and tile(28, 128, 128) == 4
    assert tile(14, 256, 256) == 2 and tile(28, 256, 256) == 2
    assert tile(7, 512, 512) == 0 and tile(14, 512, 512) == 0
    # 24 channels do not fill 16-lane vectors: the direct kernel's 8-lane tiles instead
    assert tile(56, 24, 24) == 0 and tile(56, 24, 24, lanes=4) == 4


def _reference(x, w, b, padding):
    """conv2d (NHWC, OHWI) + b, then ReLU, in float64."""
    top, left, bottom, right = padding
    xp = np.pad(x[0].astype(np.float64), ((top, bottom), (left, right), (0, 0)))
    oh, ow = xp.shape[0] - 2, xp.shape[1] - 2
    out = np.zeros((oh, ow, w.shape[0]))
    for i in range(3):
        for j in range(3):
            out += xp[i:i + oh, j:j + ow] @ w[:, i, j, :].T.astype(np.float64)
    return np.maximum(out + b, 0)[None]


@pytest.mark.parametrize("m", winograd.TILES)
@pytest.mark.parametrize("sig", [
    winograd.ConvSignature(10, 10, 16, 32, (1, 1, 1, 1)),   # partial tiles at the edges
    winograd.ConvSignature(9, 14, 8, 32, (0, 0, 0, 0)),     # no padding, 7x12 out
], ids=str)
def test_every_candidate_computes_the_convolution(sig, m, rng):
    """Each schedule candidate of the fused Winograd kernel, built the way compiles build
    it (weights transformed and packed at compile time), against a float64 convolution."""
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    target = tvm.target.Target({**compiler._tvm_target(resolve("host")), "num-cores": 2})
    conv, (w, b) = compiler._winograd_module(sig)
    x = rng.standard_normal((1, sig.height, sig.width, sig.in_channels)).astype(np.float32)
    expected = _reference(x, w, b, sig.padding)
    mod, params = compiler._tuning_module(conv, [w, b], target, lambda s: m)
    [task] = ms.relax_integration.extract_tasks(mod, target)
    kernel = task.dispatched[0]
    assert winograd.kernel_shape(kernel["main"]).tile == m
    lanes, registers = schedules.vector_config(target)
    configs = schedules.candidates(kernel["main"], lanes, registers, limit=3)
    assert len(configs) >= 2 and all(isinstance(c, winograd.WinogradConfig) for c in configs)
    for config in configs:
        sch, args_info = compiler._scheduled(kernel, config)
        with tvm.transform.PassContext():
            db = ms.database.MemoryDatabase()
            db.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, db.commit_workload(kernel), [0.0], target, args_info))
            built, weights = compiler._apply_database(mod, params, target, db)
        vm = relax.VirtualMachine(tvm.compile(built, target=target), tvm.cpu())
        out = vm["main"](tvm.runtime.tensor(x), *weights).numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * m, err_msg=str(config))


def test_untuned_model_uses_winograd_and_matches_onnxruntime(residual_onnx, tmp_path, rng):
    art = compile_model(residual_onnx, "host", tmp_path / "art")
    assert b"winograd4" in (art / artifact.LIBRARY).read_bytes()
    x = rng.standard_normal((1, 3, 20, 20)).astype(np.float32)
    expected = ort.InferenceSession(str(residual_onnx)).run(None, {"input": x})[0]
    np.testing.assert_allclose(EdgeModel.load(art).predict(x)["output"], expected,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_tuning_measures_each_shape_three_ways_once(residual_onnx, tmp_path, monkeypatch,
                                                     rng):
    monkeypatch.setattr(compiler, "TEMPLATE_CANDIDATES", 2)
    # Templates only: MetaSchedule's search for the other kernels is tested elsewhere.
    run_tuning = compiler._run_tuning
    monkeypatch.setattr(compiler, "_run_tuning", lambda mod, target, db, trials, *args:
                        run_tuning(mod, target, db, 0, *args))
    db, logs = tmp_path / "tuning", []
    art = compile_model(residual_onnx, "host", tmp_path / "a1", tune_trials=1, tuning_db=db,
                        log=logs.append)
    [verdict] = [m for m in logs if m.startswith("conv 20x20x16->16 pad 1,1,1,1: ")]
    assert "direct" in verdict and "F(2x2)" in verdict and "F(4x4)" in verdict
    tiles = compiler.read_tuning_marker(db)["winograd"]
    assert list(tiles) == ["20x20x16->16 pad 1,1,1,1"] and tiles[list(tiles)[0]] in (0, 2, 4)

    # More trials later: the shape is not measured again, and the build follows the
    # recorded choice.
    logs.clear()
    again = compile_model(residual_onnx, "host", tmp_path / "a2", tune_trials=4, tuning_db=db,
                          log=logs.append)
    assert not [m for m in logs if m.startswith("conv ")]
    assert ((b"winograd" in (again / artifact.LIBRARY).read_bytes())
            == (list(tiles.values()) != [0]))
    x = rng.standard_normal((1, 3, 20, 20)).astype(np.float32)
    expected = ort.InferenceSession(str(residual_onnx)).run(None, {"input": x})[0]
    np.testing.assert_allclose(EdgeModel.load(art).predict(x)["output"], expected,
                               rtol=1e-4, atol=1e-4)
