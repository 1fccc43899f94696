"""The register-tiled convolution schedules: which kernels they take, and that every
candidate computes what the kernel computed before scheduling."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from neo_edge_runtime import EdgeModel, compile_model
from neo_edge_runtime.compile import compiler, schedules, zoo
from neo_edge_runtime.runtime import physical_cores
from neo_edge_runtime.targets import resolve

tvm = pytest.importorskip("tvm")


def conv_model():
    """A padded strided conv (32 channels: 16-lane vectors), a depthwise conv scaled by a
    squeeze-and-excitation block (EfficientNet's: x * sigmoid(conv(relu(conv(pool(x)))))),
    a 1x1 conv to 24 channels (8-lane vectors) with no epilogue at all, and one to 136
    channels (padded to 144 for 16-lane vectors, sliced back in its epilogue)."""
    g = zoo.GraphBuilder("convs", seed=4)
    x = g.relu6(g.bn(g.conv("input", 3, 32, 3, stride=2), 32))
    x = g.relu(g.conv(x, 32, 32, 3, groups=32))
    x = g.node("Mul", [x, g.node("Sigmoid", [g.conv(g.relu(g.conv(g.gap(x), 32, 8, 1)),
                                                          8, 32, 1)])])
    x = g.conv(x, 32, 24, 1, bias=False)
    return g.model([1, 3, 16, 16], g.relu(g.conv(x, 24, 136, 1)), [1, 136, 8, 8])


@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("convs") / "convs.onnx"
    onnx.save(conv_model(), path)
    return path


@pytest.fixture(scope="module")
def tasks(conv_onnx):
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    mod, _, _ = compiler._import(conv_onnx, "ONNX", None, None)
    mod, params = relax.frontend.detach_params(mod)
    target = tvm.target.Target({**compiler._tvm_target(resolve("host")), "num-cores": 2})
    mod, _ = compiler._tuning_module(mod, list(params["main"]), target, lambda sig: 0)
    return target, ms.relax_integration.extract_tasks(mod, target)


def conv_tasks(tasks):
    target, found = tasks
    return target, [t for t in found if schedules.conv_shape(t.dispatched[0]["main"])]


def test_finds_each_convolution_and_nothing_else(tasks):
    target, found = tasks
    shapes = {t.task_name: schedules.conv_shape(t.dispatched[0]["main"]) for t in found}
    convs = sorted((s.reduction, s.out_channels, s.padded) for s in shapes.values() if s)
    assert convs == [((1, 1, 8), 32, False), ((1, 1, 24), 144, False), ((1, 1, 32), 8, False),
                     ((1, 1, 32), 24, False), ((3, 3, 1), 32, True), ((3, 3, 3), 32, True)]
    lanes, registers = schedules.vector_config(target)
    for t in found:
        if not shapes[t.task_name]:
            assert schedules.candidates(t.dispatched[0]["main"], lanes, registers) == []


def test_candidates_fit_the_registers_and_the_channels(tasks):
    target, found = conv_tasks(tasks)
    lanes, registers = schedules.vector_config(target)
    for t in found:
        shape = schedules.conv_shape(t.dispatched[0]["main"])
        configs = schedules.candidates(t.dispatched[0]["main"], lanes, registers, limit=12)
        assert 0 < len(configs) <= 12 and len(set(configs)) == len(configs)
        for c in configs:
            assert shape.out_channels % c.f_block == 0 and c.f_block % c.lanes == 0
            # column blocks divide the width, or are small and leave a tail
            assert shape.out_width % c.x_block == 0 or c.x_block < min(9, shape.out_width)
            assert c.x_block * c.f_block // c.lanes <= registers - 4
        assert {c.pad for c in configs} == ({"inline", "separate"} if shape.padded
                                            else {"inline"})
        if shape.padded:  # the untuned build takes the first: see the next test
            assert configs[0].pad == ("inline" if shape.reduction[2] == 1 else "separate")


def test_untuned_depthwise_convolutions_test_padding_in_the_loop(tasks):
    """A depthwise convolution's few steps per output do not repay a padded copy of its
    input (EfficientNet's stride-2 3x3 over 112x112x96 ran 2x slower with it), a dense
    one's do: the untuned build takes the first candidate."""
    target, found = conv_tasks(tasks)
    lanes, registers = schedules.vector_config(target)
    firsts = {}
    for t in found:
        shape = schedules.conv_shape(t.dispatched[0]["main"])
        if shape.padded:
            config = schedules.candidates(t.dispatched[0]["main"], lanes, registers)[0]
            firsts[shape.reduction[2] == 1] = config.pad
    assert firsts == {True: "inline", False: "separate"}


def test_candidates_alternate_register_filling_and_half_size_tiles():
    # SqueezeNet's first layer: 64 channels over 112 columns, 16-lane vectors, 32 registers.
    tiles = schedules.register_tiles(112, 64, 16, 32, depthwise=False)
    mixed = schedules._both_sizes(tiles, 14)
    assert sorted(mixed) == sorted(tiles)
    large = [x * f // v > 14 for _, x, f, v in mixed]
    assert large[:6] == [True, False] * 3
    for kind in (True, False):  # each kind keeps its best-first order
        assert [t for t, k in zip(mixed, large) if k == kind] == \
            [t for t in tiles if (t[1] * t[2] // t[3] > 14) == kind]
    # Only one kind: the order is register_tiles' own.
    small = [t for t in tiles if t[1] * t[2] // t[3] <= 14]
    assert schedules._both_sizes(small, 14) == small


def _run(mod, target, args):
    lib = tvm.tirx.build(mod, target=target)
    out = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*out)
    return out[-1].numpy()


def test_every_candidate_computes_the_same_as_the_unscheduled_kernel(tasks):
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    target, found = conv_tasks(tasks)
    lanes, registers = schedules.vector_config(target)
    rng = np.random.default_rng(0)
    checked = 0
    for t in found:
        mod = t.dispatched[0]
        args = [np.asarray(rng.standard_normal([int(d) for d in a.shape]), dtype=a.dtype)
                for a in ms.arg_info.ArgInfo.from_prim_func(mod["main"])]
        expected = _run(mod, target, args)
        for config in schedules.candidates(mod["main"], lanes, registers, limit=12):
            sch = s_tir.Schedule(mod)
            schedules.apply(sch, config)
            np.testing.assert_allclose(_run(sch.mod, target, args), expected,
                                       rtol=1e-5, atol=1e-5, err_msg=str(config))
            checked += 1
    assert checked >= 4 * 2


def test_squeeze_excitation_computes_its_scale_once_per_channel(tasks):
    """x * sigmoid(conv(s) + b): the sigmoid was inlined into the broadcast product with
    the feature map and so computed for every element of it (3,136 times per channel on
    EfficientNet's 56x56x144 map, 179 us against 109 us). Every candidate computes it
    per tile, at the convolution's size, and the product reads it."""
    from tvm import s_tir

    target, found = conv_tasks(tasks)
    lanes, registers = schedules.vector_config(target)
    excitations = [t.dispatched[0] for t in found
                   if len(t.dispatched[0]["main"].params) == 5
                   and schedules.conv_shape(t.dispatched[0]["main"]).out_width == 1]
    assert len(excitations) == 1
    mod = excitations[0]
    output = mod["main"].params[-1]
    for config in schedules.candidates(mod["main"], lanes, registers, limit=12):
        sch = s_tir.Schedule(mod)
        schedules.apply(sch, config)
        last, = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))
                 if sch.get(b).writes[0].source.same_as(output)]
        product = last.body.value
        assert isinstance(product, tvm.ir.prim.expr.Mul), (config, last)
        assert all(isinstance(v, tvm.ir.expr.TensorLoad)
                   for v in (product.a, product.b)), (config, last)


def pool_concat_model():
    """Channels-last pooling windows and concatenations, with convolutions around them so
    they run channels-last: a padded strided max pool over whole 16-lane vectors of
    channels, a fire module (two expand convolutions concatenated: 16 + 16 channels) read
    by a convolution to more channels, an average pool over 40 channels (8-lane vectors),
    a concatenation of 6 + 10 channels (no whole vectors), again read by a convolution to
    more channels, and a max pool over 6 (scalar). The concatenations are copied: their
    readers cannot read them in parts (``compiler._split_concatenations``)."""
    g = zoo.GraphBuilder("pools", seed=5)
    x = g.maxpool(g.relu(g.conv("input", 3, 32, 3)), 3, 2, pad=1)
    x = g.concat([g.relu(g.conv(x, 32, 16, 1)), g.relu(g.conv(x, 32, 16, 3))])
    x = g.avgpool(g.relu(g.conv(x, 32, 40, 1)), 2, 2)
    x = g.concat([g.conv(x, 40, 6, 1), g.conv(x, 40, 10, 1)])
    x = g.relu(g.conv(x, 16, 24, 1))
    x = g.maxpool(g.relu(g.conv(x, 24, 6, 1)), 3, 1)
    return g.model([1, 3, 18, 18], g.conv(x, 6, 16, 1), [1, 16, 2, 2])


def test_pools_and_concatenations_get_vectorized_templates_that_compute_the_same(
        tmp_path, rng):
    from tvm import relax, s_tir
    from tvm.s_tir import meta_schedule as ms

    path = tmp_path / "pools.onnx"
    onnx.save(pool_concat_model(), path)
    mod, _, _ = compiler._import(path, "ONNX", None, None)
    mod, params = relax.frontend.detach_params(mod)
    target = tvm.target.Target({**compiler._tvm_target(resolve("host")), "num-cores": 2})
    mod, _ = compiler._tuning_module(mod, list(params["main"]), target, lambda sig: 0)
    lanes, registers = schedules.vector_config(target)
    vectorized = []
    for t in ms.relax_integration.extract_tasks(mod, target):
        kernel = t.dispatched[0]
        configs = schedules.candidates(kernel["main"], lanes, registers)
        kinds = {type(c) for c in configs}
        if "pool" in t.task_name:
            assert configs == [schedules.PoolConfig(lanes)], t.task_name
        elif "concat" in t.task_name:
            assert kinds == {schedules.ConcatConfig}, t.task_name
        else:
            assert not kinds & {schedules.PoolConfig, schedules.ConcatConfig}, t.task_name
            continue
        args = [np.asarray(rng.standard_normal([int(d) for d in a.shape]), dtype=a.dtype)
                for a in ms.arg_info.ArgInfo.from_prim_func(kernel["main"])]
        sch = s_tir.Schedule(kernel)
        schedules.apply(sch, configs[0])
        np.testing.assert_array_equal(_run(sch.mod, target, args), _run(kernel, target, args),
                                      err_msg=t.task_name)
        vectorized.append((str(configs[0]), "vectorized" in str(sch.mod)))
    pool = f"pool ({lanes} lanes)"
    assert sorted(vectorized) == [  # 6 channels, and 6 + 10: no whole vector
        (f"concat 16+16 ({lanes} lanes)", True), (f"concat 6+10 ({lanes} lanes)", False),
        (pool, False), (pool, True), (pool, True)]

    x = rng.standard_normal((1, 3, 18, 18)).astype(np.float32)
    art = compile_model(path, "host", tmp_path / "art")  # untuned: the templates, unmeasured
    expected = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    np.testing.assert_allclose(EdgeModel.load(art).predict(x)["output"], expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_tuning_measures_each_template_once_and_matches_onnxruntime(conv_onnx, tmp_path,
                                                                    monkeypatch, rng, tasks):
    target, found = conv_tasks(tasks)
    lanes, registers = schedules.vector_config(target)
    # The excitation's first convolution (one pixel, 8 channels) has one candidate only.
    available = {compiler._kernel_key(t.dispatched[0]):
                 len(schedules.candidates(t.dispatched[0]["main"], lanes, registers))
                 for t in found}
    monkeypatch.setattr(compiler, "TEMPLATE_CANDIDATES", 2)
    db = tmp_path / "tuning"
    logs = []
    art = compile_model(conv_onnx, "host", tmp_path / "a1", tune_trials=4, tuning_db=db,
                        log=logs.append)
    marker = compiler.read_tuning_marker(db)["templates"]
    # The convolutions' templates; the other kernels' one, their default schedule,
    # measured beside MetaSchedule's search for them.
    searched = {k: s for k, s in marker.items() if s["measured"] != ["default schedule"]}
    defaults = {k: s for k, s in marker.items() if s["measured"] == ["default schedule"]}
    assert len(searched) == 6 and defaults
    assert searched.keys() == available.keys()
    for key, s in searched.items():
        assert s["ms"] > 0 and s["schedule"] in s["measured"]
        assert len(s["measured"]) == min(2, available[key])
    assert all(s["ms"] > 0 for s in defaults.values())
    assert sum("tile " in m for m in logs) == 6
    records = [json.loads(line)[1] for line in
               (db / "database_tuning_record.json").read_text().splitlines()]
    # Every measured candidate is recorded, with its time on all cores and, where there
    # are several, its time on one core (MetaSchedule's records: one time).
    times = 2 if physical_cores() > 1 else 1
    assert sum(len(r[1]) == times for r in records) == \
        sum(min(2, n) for n in available.values())

    # More trials later, with a third candidate per kernel: MetaSchedule continues, and of
    # the templates only the new candidates are measured.
    monkeypatch.setattr(compiler, "TEMPLATE_CANDIDATES", 3)
    compile_model(conv_onnx, "host", tmp_path / "a2", tune_trials=8, tuning_db=db)
    again = compiler.read_tuning_marker(db)["templates"]
    assert again.keys() == marker.keys()
    for key in searched:
        s = again[key]
        assert set(searched[key]["measured"]) <= set(s["measured"])
        assert len(s["measured"]) == min(3, available[key])
        assert s["ms"] <= searched[key]["ms"]
    assert all(again[key] == defaults[key] for key in defaults)  # measured once
    assert list(compiler.read_tuning_marker(db)["trials"].values()) == [8]

    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(conv_onnx)).run(None, {"input": x})[0]
    np.testing.assert_allclose(EdgeModel.load(art).predict(x)["output"], expected, atol=1e-4)
