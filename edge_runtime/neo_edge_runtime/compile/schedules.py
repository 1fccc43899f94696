"""Register-tiled CPU schedules for channels-last convolutions (build machine only).

MetaSchedule's generic search space needs thousands of trials per network before its
convolutions come near a hand-written kernel library. A convolution in NHWC layout has
one good shape on a CPU, the one NeoCPU (the paper behind SageMaker Neo's CPU backend)
and oneDNN use: a tile of ``x_block`` output columns by ``f_block`` output channels held
in vector registers, the reduction over (kh, kw, input channel) around it, one input
value broadcast against ``f_block / lanes`` weight vectors per step, the weights packed
in the order the loop reads them, and the bias/activation/residual epilogue applied to
the tile while it is still in registers. Only the tile sizes, the handling of padding and
the loop order around the tile depend on the layer, so a dozen measured candidates per
convolution find a schedule, where the generic search needs hundreds.

:func:`candidates` lists the configurations worth measuring for a kernel (none when the
kernel is not a float convolution this schedule fits); :func:`apply` schedules it. The
compiler measures the candidates and stores the fastest as an ordinary MetaSchedule tuning
record, so compiling applies it like any other.

Channels-last pooling windows and channel concatenations get a template too
(:class:`PoolConfig`, :class:`ConcatConfig`): the few trials MetaSchedule's search gives
such cheap kernels leave them scalar, or worse (a pooling window rfactored into a
temporary), at up to three times the time of a vectorized loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from . import generic, winograd
from ._tiling import SPARE_REGISTERS, register_tiles, vector_split, vector_width, vectorize
from ._tiling import vector_config  # noqa: F401 (the compiler's and tests' name for it)

#: TensorIR iteration kinds (tirx.IterVar): spatial and reduction.
_SPATIAL, _REDUCE = 0, 2
#: A convolution block iterates (n, y, x, f) and reduces (kh, kw, ci).
_CONV_ITERS = [_SPATIAL] * 4 + [_REDUCE] * 3


@dataclass(frozen=True)
class ConvConfig:
    """One schedule of a convolution kernel."""

    x_block: int        #: output columns per register tile
    f_block: int        #: output channels per register tile (a multiple of ``lanes``)
    lanes: int          #: vector width, in elements
    pad: str            #: "inline" (padding tested in the loop) or "separate" (padded copy first)
    channels_outer: bool = False  #: output-channel blocks outermost (weights stay in cache)

    def __str__(self) -> str:
        order = "f-outer" if self.channels_outer else "x-outer"
        return f"tile {self.x_block}x{self.f_block} ({self.lanes} lanes), pad {self.pad}, {order}"


@dataclass(frozen=True)
class ConvShape:
    """What the schedule needs to know of a convolution kernel."""

    block: str
    out_width: int
    out_channels: int
    reduction: tuple[int, int, int]   #: (kh, kw, input channels per group)
    padded: bool


def conv_shape(func) -> Optional[ConvShape]:
    """The float32 NHWC convolution ``func`` computes, or None when it is something else."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    convs = [b for b in blocks if b.name_hint.endswith("conv2d_nhwc")]
    if len(convs) != 1:
        return None
    conv = convs[0]
    kinds = [int(iv.iter_type) for iv in conv.iter_vars]
    if kinds != _CONV_ITERS or conv.writes[0].source.dtype != "float32":
        return None
    ext = [int(iv.dom.extent) for iv in conv.iter_vars]
    if ext[0] != 1:
        return None
    padded = any(b.name_hint.startswith("pad") and "if_then_else" in str(b.body) for b in blocks)
    return ConvShape(conv.name_hint, ext[2], ext[3], (ext[4], ext[5], ext[6]), padded)


@dataclass(frozen=True)
class PoolConfig:
    """The schedule of a channels-last pooling kernel: parallel over output rows, each
    output column's window reduced into one vector of channels at a time."""

    lanes: int

    def __str__(self) -> str:
        return f"pool ({self.lanes} lanes)"


#: A pooling block iterates (n, y, x, c) and reduces (ky, kx).
_POOL_ITERS = [_SPATIAL] * 4 + [_REDUCE] * 2


def _pool_block(func) -> Optional[str]:
    """The name of ``func``'s float32 NHWC pooling-window block, or None when ``func`` is
    something else (global pooling is a ``mean``, not a window)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    pools = [b for b in blocks if b.name_hint in ("pool_max", "pool_sum")]
    if len(pools) != 1:
        return None
    pool = pools[0]
    if [int(iv.iter_type) for iv in pool.iter_vars] != _POOL_ITERS \
            or pool.writes[0].source.dtype != "float32":
        return None
    channel = pool.iter_vars[3].var
    # Channels last: every buffer the window reads is indexed by the channel last.
    if not all(r.region[-1].min.same_as(channel) for r in pool.reads):
        return None
    return pool.name_hint


@dataclass(frozen=True)
class ConcatConfig:
    """The schedule of a concatenation along channels (the last axis): parallel over rows,
    the channel loop partitioned at the inputs' boundaries, so each part is a plain
    vectorized copy of one input instead of a per-element choice between them."""

    lanes: int
    parts: tuple[int, ...]  #: the inputs' channels, in output order

    def __str__(self) -> str:
        return f"concat {'+'.join(map(str, self.parts))} ({self.lanes} lanes)"


def _concat_parts(func) -> Optional[tuple[int, ...]]:
    """The channels of each input of ``func``, a float32 concatenation along its last axis
    in output order, or None when ``func`` is something else."""
    from tvm import s_tir, sym, tirx

    sch = s_tir.Schedule(func)
    blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    if len(blocks) != 1 or blocks[0].name_hint != "T_concat":
        return None
    block = blocks[0]
    if any(int(iv.iter_type) != _SPATIAL for iv in block.iter_vars) \
            or block.writes[0].source.dtype != "float32":
        return None
    channel = block.iter_vars[-1].var
    analyzer = sym.Analyzer()
    parts = []
    for read in block.reads:
        offset = analyzer.simplify(channel - read.region[-1].min)
        if not isinstance(offset, tirx.IntImm):
            return None  # not concatenated along the last axis
        parts.append((int(offset), int(read.source.shape[-1])))
    parts.sort()
    if [o for o, _ in parts] != [sum(n for _, n in parts[:i]) for i in range(len(parts))]:
        return None
    return tuple(n for _, n in parts)


@dataclass(frozen=True)
class DefaultConfig:
    """A kernel no other template covers (a matrix product, softmax, layer norm, the
    elementwise glue): the default CPU schedule (:func:`.generic.schedule_kernel`). As
    a template it is measured when tuning, so MetaSchedule's search replaces it only
    where it found a faster schedule: ten minutes of search on a ViT had made it 1.17x
    slower than its untuned build.

    Its weights stay in their layout. Packed in the order its register tile reads them
    (MetaSchedule's RewriteLayout), EfficientNet's classifier (1280 x 1000, one image)
    ran 0.35 ms instead of about 0.5 and the ViT no faster; but a kernel called at several
    sites gets a packed copy of its weights per site: the keyword-spotting LSTM through
    torch.export (whose decomposition runs one product per time step) went from 13 MB of
    weights and 2.0 ms to 27 MB and 3.4 ms (one thread)."""

    lanes: int
    target: Any = field(compare=False, repr=False)

    def __str__(self) -> str:
        return "default schedule"


def _both_sizes(tiles: list, half: int) -> list:
    """``tiles`` (:func:`register_tiles`) reordered to alternate between tiles of more
    than ``half`` accumulators and the others, each kind best first.

    A tile that fills the registers suits a deep reduction. Over a shallow one (a first
    layer's 3 input channels: 27 steps per tile) the tile's set-up and epilogue weigh
    more, and LLVM spills the larger tiles: SqueezeNet's first convolution ran 1.6 times
    slower with the best of the register-filling tiles than with a 12-accumulator one,
    and when the candidates were the best-scored twelve, none was that small."""
    large = [t for t in tiles if t[1] * t[2] // t[3] > half]
    small = [t for t in tiles if t[1] * t[2] // t[3] <= half]
    mixed = [t for pair in zip(large, small) for t in pair]
    n = len(mixed) // 2
    return mixed + large[n:] + small[n:]


def candidates(func, lanes: int, registers: int, limit: int = 12, target=None) -> list:
    """Configurations worth measuring for ``func``, the most promising first: direct
    convolutions get ConvConfigs, Winograd kernels (:mod:`.winograd`) theirs, pooling
    windows and channel concatenations their one; with ``target`` (the TVM target),
    any other kernel its :class:`DefaultConfig`.

    ``lanes``: float32 elements per vector register; ``registers``: vector registers.
    """
    if _pool_block(func):
        return [PoolConfig(lanes)]
    parts = _concat_parts(func)
    if parts:
        return [ConcatConfig(lanes, parts)]
    shape = conv_shape(func)
    if shape is None:
        found = winograd.candidates(func, lanes, registers, limit)
        return found or ([DefaultConfig(lanes, target)] if target is not None else [])
    depthwise = shape.reduction[2] == 1
    tiles = _both_sizes(register_tiles(shape.out_width, shape.out_channels, lanes,
                                       registers, depthwise=depthwise),
                        (registers - SPARE_REGISTERS) // 2)
    # A padded copy of the input costs a pass over it, which a deep reduction repays (a
    # ResNet 3x3 convolution: 0.8 ms with it, 1.4 ms testing the padding in the loop) and
    # a depthwise one's nine or 25 steps per output do not (EfficientNet's stride-2 3x3
    # over 112x112x96: 0.33 ms testing in the loop, 0.68 ms with the copy; one thread).
    pads = (["inline", "separate"] if depthwise else ["separate", "inline"]) \
        if shape.padded else ["inline"]
    configs = [ConvConfig(x, f, width, pad) for _, x, f, width in tiles for pad in pads]
    weights = shape.reduction[0] * shape.reduction[1] * shape.reduction[2] * shape.out_channels
    if weights * 4 > 256 * 1024:
        # Weights that outgrow L2: channel blocks outermost read each weight once.
        outer = [ConvConfig(c.x_block, c.f_block, c.lanes, c.pad, True) for c in configs]
        configs = [c for pair in zip(outer, configs) for c in pair]
    return configs[:limit]


def apply(sch, config) -> None:
    """Schedule the kernel in ``sch`` with ``config``, one of :func:`candidates`."""
    from tvm.s_tir import meta_schedule as ms

    if isinstance(config, winograd.WinogradConfig):
        winograd.apply(sch, config)
        return
    if isinstance(config, PoolConfig):
        _apply_pool(sch, config)
        return
    if isinstance(config, ConcatConfig):
        _apply_concat(sch, config)
        return
    if isinstance(config, DefaultConfig):
        _apply_default(sch, config)
        return

    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    at = next(i for i, n in enumerate(names) if n.endswith("conv2d_nhwc"))
    conv, before, after = blocks[at], blocks[:at], blocks[at + 1:]
    # The epilogue runs per tile up to a step that broadcasts its result to more
    # elements (squeeze-and-excitation's scale); that step runs after the tiles.
    size = generic.elements(sch, conv)
    wide = next((i for i, b in enumerate(after) if generic.elements(sch, b) > size),
                len(after))
    after, broadcast = after[:wide], after[wide:]
    for b in after[:-1]:
        sch.compute_inline(b)
    out = after[-1] if after else sch.cache_write(conv, 0, "global")

    n, y, x, f, ry, rx, rc = sch.get_loops(conv)
    xo, xi = sch.split(x, [None, config.x_block])
    fo, fi = sch.split(f, [None, config.f_block])
    fu, fv = sch.split(fi, [None, config.lanes])
    if config.channels_outer:
        sch.reorder(fo, n, y, xo, ry, rx, rc, xi, fu, fv)
        tile = sch.fuse(fo, n, y, xo)
    else:
        sch.reorder(n, y, xo, fo, ry, rx, rc, xi, fu, fv)
        tile = sch.fuse(n, y, xo, fo)
    sch.parallel(tile)
    sch.unroll(xi)
    sch.unroll(fu)
    sch.vectorize(fv)

    for b in before:
        if config.pad == "inline":
            sch.compute_inline(b)
            continue
        loops = sch.get_loops(b)
        sch.parallel(sch.fuse(*loops[:2]))
        vectorize(sch, loops[-1], config.lanes)

    sch.reverse_compute_at(out, tile)
    inner = sch.get_loops(out)[-1]
    sch.vectorize(sch.split(inner, [None, config.lanes])[1])
    sch.decompose_reduction(conv, ry)
    if broadcast:
        generic.schedule_broadcast(sch, broadcast, config.lanes)
    # Pack the weights in the order the tile reads them (done once, at compile time).
    sch.enter_postproc()
    ms.postproc.RewriteLayout().apply(sch)


def _apply_default(sch, config: DefaultConfig) -> None:
    if not generic.schedule_kernel(sch, config.lanes, config.target):
        raise ValueError("no default schedule fits this kernel")


def _apply_pool(sch, config: PoolConfig) -> None:
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    at = names.index(_pool_block(sch.mod["main"]))
    pool, before, after = blocks[at], blocks[:at], blocks[at + 1:]
    for b in before:  # padding: tested in the loop, once per window position
        sch.compute_inline(b)
    n, y, x, c, ky, kx = sch.get_loops(pool)
    co, ci = vector_split(sch, c, config.lanes)
    sch.reorder(n, y, x, co, ky, kx, *([ci] if ci is not None else []))
    rows = sch.fuse(n, y)
    sch.parallel(rows)
    sch.unroll(ky)
    sch.unroll(kx)
    if ci is not None:
        sch.vectorize(ci)
    sch.decompose_reduction(pool, ky)
    for b in after:  # an average's division, per output column
        sch.reverse_compute_at(b, x)
        vectorize(sch, sch.get_loops(b)[-1], config.lanes)


def _apply_concat(sch, config: ConcatConfig) -> None:
    *outer, channels = sch.get_loops(sch.get_sblock("T_concat"))
    sch.parallel(sch.fuse(*outer[:-1]) if len(outer) > 1 else outer[0])
    step = vector_width(math.gcd(*config.parts), config.lanes)
    if step == 1:
        return  # no vector fits every input: left to LLVM
    vectors, lanes = sch.split(channels, [None, step])
    if len(config.parts) == 1:
        sch.vectorize(lanes)
        return
    # One loop per input: each part's block reads that input alone, and the choice
    # between inputs, a vector condition that would keep the loop scalar, folds away.
    for part in sch.loop_partition(vectors, [n // step for n in config.parts[:-1]] + [None]):
        block, = sch.get_child_blocks(part)
        sch.vectorize(sch.get_loops(block)[-1])
