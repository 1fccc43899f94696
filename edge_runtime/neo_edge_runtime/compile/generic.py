"""Rewrites and default schedules for the operators our templates do not name
(build machine only).

The template schedules (:mod:`.schedules`, :mod:`.winograd`) cover channels-last 2-D
convolutions, pooling windows and concatenations. A model exported from PyTorch brings
more: 1-D convolutions and pools (sensor and audio models), hardswish and hardsigmoid
(``Clip``), fully connected layers, softmax and layer norm, and the elementwise glue
between them. TVM compiles a kernel nobody scheduled as the loops its operator was
written as, on one core and without vectors: a 1-D convolution ran 70 times slower than
ONNX Runtime's, and a 1024x1000 fully connected layer 10 times.

- :func:`conv1d_as_conv2d` writes 1-D convolutions and pools as 2-D ones of height 1, so
  the 2-D templates (and the channels-last layout) serve them;
- :func:`conv_transpose_as_conv` computes transposed convolutions (a U-Net's
  upsampling) as direct convolutions and a depth-to-space shuffle;
- :func:`clip_as_min_max` writes ``clip`` as ``minimum(maximum(x, lo), hi)``, which
  layout conversion sees through (it has no layout rule for ``clip`` and would transpose
  every hardswish's input back to channels first and its output forward again);
- :func:`unit_permutes_as_reshapes` turns the transposes that only move axes of size 1
  (left around those 1-D operators) into reshapes, which cost nothing;
- :func:`fast_math` computes sigmoid (SiLU, EfficientNet's and YOLO's activation), tanh
  and erf (GELU) by polynomial approximations that vectorize;
- :func:`schedule_unscheduled` gives every kernel no template or tuning record scheduled
  a default CPU schedule: parallel over its outer loops, vectorized along its innermost
  one; a matrix product (fully connected layer) with its reduction outside the output
  columns, so each step is one broadcast and a vector multiply-add.

Each is a pass in the sense of :class:`.compiler._Passes`: the compiler skips any that
fails, and :func:`schedule_unscheduled` leaves a kernel it cannot schedule as it was.
"""

from __future__ import annotations


def _static_shape(expr):
    """The shape of a Relax tensor ``expr`` as ints; None where it is not a tensor of
    known rank or a dimension is symbolic."""
    from tvm import relax

    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or ty.ndim < 0:
        return None
    try:
        return [int(d) for d in ty.shape.values]
    except TypeError:  # a symbolic dimension
        return None


def conv1d_as_conv2d(mod):
    """``mod`` with every NCW ``conv1d``, ``max_pool1d`` and ``avg_pool1d`` computed as
    the 2-D operator on the input with a height of 1 (``expand_dims`` before, ``squeeze``
    after), which layout conversion then turns channels last like any 2-D convolution."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x, w = wildcard(), wildcard()
    conv = is_op("relax.nn.conv1d")(x, w)
    maxp, avgp = is_op("relax.nn.max_pool1d")(x), is_op("relax.nn.avg_pool1d")(x)

    def rewrite_conv(expr, matched):
        a = matched[conv].attrs
        if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCW", "OIW", "NCW"):
            return expr
        lo, hi = (int(p) for p in a.padding)
        y = relax.op.nn.conv2d(
            relax.op.expand_dims(matched[x], [2]), relax.op.expand_dims(matched[w], [2]),
            strides=[1, int(a.strides[0])], padding=[0, lo, 0, hi],
            dilation=[1, int(a.dilation[0])], groups=int(a.groups),
            data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW",
            out_dtype=a.out_dtype if str(a.out_dtype) else None)
        return relax.op.squeeze(y, [2])

    def rewrite_pool(expr, matched):
        call = matched[maxp] if maxp in matched else matched[avgp]
        a = call.attrs
        if (a.layout, a.out_layout) != ("NCW", "NCW"):
            return expr
        lo, hi = (int(p) for p in a.padding)
        kwargs = dict(pool_size=[1, int(a.pool_size[0])], strides=[1, int(a.strides[0])],
                      padding=[0, lo, 0, hi], dilation=[1, int(a.dilation[0])],
                      ceil_mode=bool(a.ceil_mode), layout="NCHW")
        data = relax.op.expand_dims(matched[x], [2])
        if call.op.name.endswith("max_pool1d"):
            y = relax.op.nn.max_pool2d(data, **kwargs)
        else:
            y = relax.op.nn.avg_pool2d(data, count_include_pad=bool(a.count_include_pad),
                                       **kwargs)
        return relax.op.squeeze(y, [2])

    funcs = {}
    for gv, f in mod.functions.items():
        if isinstance(f, relax.Function):
            f = rewrite_call(conv, rewrite_conv, f)
            f = rewrite_call(maxp | avgp, rewrite_pool, f)
        funcs[gv] = f
    return tvm.IRModule(funcs, attrs=mod.attrs)


def conv_transpose_as_conv(mod):
    """``mod`` with every NCHW ``conv2d_transpose`` whose kernel is a multiple of its
    stride computed as a direct convolution followed by a depth-to-space shuffle (the
    "sub-pixel convolution" identity), where TVM's own operator computes the zero-dilated
    input convolved with the whole kernel, in channels-first layout, with no template:
    a U-Net's 2x2 stride-2 upsamplings took 85% of its time.

    With stride ``s`` and kernel ``k = m * s``, output row ``j * s + a`` (``a < s``)
    sums the input rows ``j - q`` (``q < m``) times kernel row ``q * s + a``. So a
    convolution of the input padded by ``m - 1`` on each side, with ``s * s`` times the
    output channels and the kernel's ``m x m`` taps of each phase ``(a, b)`` reversed,
    gives every phase of every output pixel; a reshape and transpose interleave the
    phases (``DepthToSpace``'s channel order ``(c, a, b)``), and the ``padding`` is
    cropped off. The weights are rearranged by Relax operators on the weights alone,
    which the compiler computes once at build time.

    Grouped, dilated and ``output_padding`` transposed convolutions, and those whose
    kernel is not a multiple of the stride, stay as they are. Before layout conversion:
    the new convolution goes channels last like the others.
    """
    import tvm
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x, w = wildcard(), wildcard()
    deconv = is_op("relax.nn.conv2d_transpose")(x, w)

    def rewrite(expr, matched):
        a = matched[deconv].attrs
        data, weight = matched[x], matched[w]
        strides = [int(s) for s in a.strides]
        xs, ws = _static_shape(data), _static_shape(weight)
        if (str(a.data_layout), str(a.kernel_layout)) != ("NCHW", "IOHW") \
                or (a.out_layout is not None and str(a.out_layout) not in ("", "NCHW")) \
                or int(a.groups) != 1 or any(int(d) != 1 for d in a.dilation) \
                or any(int(p) for p in a.output_padding) or xs is None or ws is None \
                or len(xs) != 4 or len(ws) != 4 \
                or any(k % s for k, s in zip(ws[2:], strides)):
            return expr
        (n, _, h, wd), (ci, co, kh, kw) = xs, ws
        (sh, sw), (mh, mw) = strides, (kh // strides[0], kw // strides[1])
        top, left, bottom, right = (int(p) for p in a.padding)
        # [Ci, Co, kh, kw] -> [Ci, Co, mh, sh, mw, sw], taps reversed, then
        # [Co, sh, sw, Ci, mh, mw] -> [Co * sh * sw, Ci, mh, mw].
        taps = relax.op.reshape(weight, [ci, co, mh, sh, mw, sw])
        if mh > 1:
            taps = relax.op.flip(taps, 2)
        if mw > 1:
            taps = relax.op.flip(taps, 4)
        kernel = relax.op.reshape(relax.op.permute_dims(taps, [1, 3, 5, 0, 2, 4]),
                                  [co * sh * sw, ci, mh, mw])
        y = relax.op.nn.conv2d(data, kernel, strides=[1, 1],
                               padding=[mh - 1, mw - 1, mh - 1, mw - 1],
                               data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW",
                               out_dtype=a.out_dtype if str(a.out_dtype) else None)
        oh, ow = h + mh - 1, wd + mw - 1
        y = relax.op.reshape(y, [n, co, sh, sw, oh, ow])
        y = relax.op.reshape(relax.op.permute_dims(y, [0, 1, 4, 2, 5, 3]),
                             [n, co, oh * sh, ow * sw])
        if top or left or bottom or right:
            y = relax.op.strided_slice(y, axes=[2, 3], begin=[top, left],
                                       end=[oh * sh - bottom, ow * sw - right])
        return y

    funcs = {gv: rewrite_call(deconv, rewrite, f) if isinstance(f, relax.Function) else f
             for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs)


def clip_as_min_max(mod):
    """``mod`` with every float ``clip(x, lo, hi)`` written ``minimum(maximum(x, lo), hi)``
    (the same values: NaN stays NaN either way)."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x, lo, hi = wildcard(), wildcard(), wildcard()
    clip = is_op("relax.clip")(x, lo, hi)

    def bound(value, dtype):
        """A constant bound (an integer or float immediate) as a tensor of ``dtype``."""
        value = getattr(value, "value", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return relax.const(float(value), dtype)
        return None

    def rewrite(expr, matched):
        ty = matched[x].ty
        if not isinstance(ty, relax.TensorType) or not str(ty.dtype).startswith("float"):
            return expr
        low, high = bound(matched[lo], ty.dtype), bound(matched[hi], ty.dtype)
        if low is None or high is None:
            return expr
        return relax.op.minimum(relax.op.maximum(matched[x], low), high)

    funcs = {gv: rewrite_call(clip, rewrite, f) if isinstance(f, relax.Function) else f
             for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs)


def unit_permutes_as_reshapes(mod):
    """``mod`` with every ``permute_dims`` that only moves axes of size 1 written as the
    ``reshape`` it is (the elements keep their order), which the VM does without a copy.
    Layout conversion leaves such transposes around 1-D convolutions computed as 2-D
    ones (:func:`conv1d_as_conv2d`) and around squeezed axes."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x = wildcard()
    permute = is_op("relax.permute_dims")(x)

    def rewrite(expr, matched):
        shape = _static_shape(matched[x])
        if shape is None:
            return expr
        axes = matched[permute].attrs.axes
        order = list(range(len(shape))) if axes is None else [int(a) for a in axes]
        if axes is None:
            order.reverse()
        moved = [a for a in order if shape[a] != 1]
        if moved != sorted(moved):
            return expr
        return relax.op.reshape(matched[x], [shape[a] for a in order])

    funcs = {gv: rewrite_call(permute, rewrite, f) if isinstance(f, relax.Function) else f
             for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs)


#: Below this many elements a kernel without a reduction runs on one thread: waking the
#: pool costs more than the work.
PARALLEL_MIN_WORK = 1 << 15
#: The same for a product, in multiply-adds: on two threads a GRU step's 128x256
#: product took 2.4 us in parallel and 1.0 us on one; at 128x512 the two were equal, at
#: 256x1024 parallel was 1.7x faster (the 2-core build machine, TVM_NUM_THREADS=2).
PARALLEL_MIN_MACS = 1 << 16
#: Softmax rows longer than this are padded to a multiple of it: a whole number of the
#: widest float32 vectors (AVX-512's 16 lanes; 8 and 4 divide it).
_ROW_VECTOR = 16
#: The largest register tile of a matrix product, rows x vectors of output columns, with
#: 16 vector registers (AVX2; 12 accumulators) and with 32 (AVX-512, AArch64: 24). On
#: 32 registers 6 x 4 ran a ViT's linear layers 10-20% faster than 4 x 3, and than
#: 8 x 3 and 12 x 2 (one thread, 197 tokens, 192 <-> 768 features).
_TILES = {16: (4, 3), 32: (6, 4)}

_SCHEDULED = "tirx.is_scheduled"


def _is_scheduled(func) -> bool:
    return func.attrs is not None and _SCHEDULED in func.attrs \
        and int(func.attrs[_SCHEDULED]) == 1


def schedule_unscheduled(mod, target, log=lambda msg: None):
    """``mod`` with each TIR kernel that nothing scheduled yet (no template, no tuning
    record: its loops as its operator wrote them) given a default CPU schedule
    (:func:`default_schedule`). A kernel no rule fits, or whose schedule fails, is left
    as it was and named through ``log``."""
    import tvm
    from tvm import tirx

    from ._tiling import vector_config

    lanes = vector_config(target)[0]
    funcs, left = {}, []
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and not _is_scheduled(func):
            try:
                func = default_schedule(func, lanes, target) or func
            except Exception:  # this kernel keeps its loops as written
                left.append(gv.name_hint)
        funcs[gv] = func
    if left:
        log(f"default schedules: {len(left)} kernels left as written: "
            f"{', '.join(sorted(left)[:8])}{' ...' if len(left) > 8 else ''}")
    return tvm.IRModule(funcs, attrs=mod.attrs)


def default_schedule(func, lanes: int, target=None):
    """``func`` scheduled for a CPU (:func:`schedule_kernel`), marked scheduled; None
    when no rule fits."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    if not schedule_kernel(sch, lanes, target):
        return None
    return sch.mod["main"].with_attr(_SCHEDULED, True)


def schedule_kernel(sch, lanes: int, target=None) -> bool:
    """Schedule the kernel in ``sch`` (unscheduled) for a CPU with vectors of ``lanes``
    float32 elements, by the first rule that fits; False, ``sch`` unchanged, when none
    does. As a template (:class:`.schedules.DefaultConfig`) its steps are replayed from
    the trace, and tuning measures it against MetaSchedule's search.

    - Blocks that only compute an element from others (elementwise, broadcast, padding,
      transposes) are inlined into their readers where TVM allows it.
    - With no reduction left: each block parallel over its outer loops, vectorized along
      its innermost (or along all of its loops fused, when the innermost is shorter than
      a vector).
    - One reduction (a matrix product, a mean, a pooling window) with elementwise blocks
      after it: a register tile of rows by vectors of its innermost output axis
      (:data:`_TILES`), the reduction outside the tile's columns, so each step broadcasts
      one input value against whole vectors of the other operand; parallel over the
      tiles; the blocks after it computed per tile. Columns no vector divides are padded
      to whole vectors and rows to whole tiles first (:func:`_pad_to_tiles`).
    - Several reductions along rows (softmax, layer norm): :func:`_row_reductions`.
    - Other sequences of reductions: TVM's dlight CPU rule.
    """
    for rule in (_product_or_elementwise, _row_reductions, _dlight_reduction):
        # Tried on a copy: a rule that does not fit may have changed it half-way.
        try:
            fits = rule(sch.copy(), lanes, target)
        except Exception:  # TVM refused a step: not of that rule's shape after all
            fits = False
        if fits:
            return rule(sch, lanes, target)
    return False


def _product_or_elementwise(sch, lanes: int, target) -> bool:
    from ._tiling import vector_config

    root = sch.get_sblock("root")
    _inline(sch, root)
    blocks = sch.get_child_blocks(root)
    reducing = [b for b in blocks if _reduce_count(sch, b)]
    if not reducing:
        for b in blocks:
            _elementwise(sch, b, lanes)
        return True
    if len(reducing) == 1 and sch.get(blocks[0]).same_as(sch.get(reducing[0])):
        tile = _TILES[32 if target is not None and vector_config(target)[1] >= 32 else 16]
        block, after = reducing[0], blocks[1:]
        padded = _pad_to_tiles(sch, block, lanes, tile)
        if padded is not None:
            block, after = padded
        _reduction(sch, block, after, lanes, tile)
        return True
    return False


def _dlight_reduction(sch, lanes: int, target) -> bool:
    """TVM's dlight rule, whose parallel loop is dropped below PARALLEL_MIN_WORK (it
    parallelizes any extent, even a softmax's single row)."""
    if target is None:
        return False
    from tvm import s_tir
    from tvm.s_tir.dlight.cpu import Reduction

    planned = Reduction().apply(sch.mod["main"], target, False)
    if planned is None:
        return False
    steps = planned.trace.insts
    last = planned.get_child_blocks(planned.get_sblock("root"))[-1]
    if _work(planned, last) < PARALLEL_MIN_WORK:
        steps = [i for i in steps if i.kind.name != "Parallel"]
    # The rule's steps replayed on ``sch`` (dlight makes a schedule of its own).
    s_tir.Trace(steps, {}).apply_to_schedule(sch, remove_postproc=False)
    return True


def _reduce_count(sch, block) -> int:
    return sum(1 for iv in sch.get(block).iter_vars if int(iv.iter_type) != 0)


def _row_reductions(sch, lanes: int, target=None) -> bool:
    """Schedule ``sch`` as several reductions along the rows of its output (softmax,
    layer norm); False where it is not that or a reduction's row is not whole vectors
    long (the fast softmax pads its rows: :func:`fast_math`).

    Per row, each reduction accumulates one vector of partial results (``rfactor``),
    added across lanes at its end, and the elementwise steps run on vectors; the rows
    run in parallel where there is enough work. TVM's dlight rule, the fallback,
    accumulates in one scalar, a chain of dependent adds: on a ViT's layer norm
    (197 x 192, one thread) 77 us, against 8.6 us here.
    """
    root = sch.get_sblock("root")
    _inline_single_readers(sch, root)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    last = sch.get_sblock(names[-1])
    rows = sch.get_loops(last)[:-1]
    if _reduce_count(sch, last) or not rows:
        return False
    partials = {}
    for name in names[:-1]:
        block = sch.get_sblock(name)
        kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
        if kinds.count(0) == len(kinds):
            continue
        loops = sch.get_loops(block)
        row = _extent(sch, loops[-1])
        if kinds[-1] == 0 or kinds.count(0) != len(kinds) - 1 or row % lanes:
            return False  # not one reduction along a row of whole vectors
        _, lane = sch.split(loops[-1], [None, lanes])
        partial = sch.rfactor(lane, factor_axis=len(sch.get(block).writes[0].source.shape))
        partials[sch.get(partial).name_hint] = row // lanes
    work = _work(sch, last)
    spatial = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    if work >= PARALLEL_MIN_WORK:  # before the steps under it are split up
        sch.parallel(spatial)
    for block in reversed(sch.get_child_blocks(root)[:-1]):
        sch.compute_at(block, spatial, preserve_unit_loops=True)
    for name in [sch.get(b).name_hint for b in sch.get_child_blocks(root)]:
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)[1:]  # under the rows
        if name in partials:
            # loops [lane, unit loops..., along the row]: the row outside the lane
            lane, along = loops[0], loops[-1]
            if _extent(sch, lane) != lanes or _extent(sch, along) != partials[name]:
                return False
            sch.reorder(along, lane)
            sch.vectorize(lane)
            sch.decompose_reduction(block, along)
        elif not _reduce_count(sch, block):
            _vectorize_inner(sch, block, lanes)
    return True


def _inline_single_readers(sch, root) -> None:
    """Inline each elementwise block that one block reads, until none is left: a step
    two blocks read (softmax's exponentials) is computed once, per row."""
    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(root)[:-1]:
            if not _reduce_count(sch, block) and len(sch.get_consumers(block)) == 1:
                try:
                    sch.compute_inline(block)
                    changed = True
                    break
                except Exception:  # TVM refused: computed on its own
                    pass


def _inline(sch, root) -> None:
    """Inline every elementwise block into its readers, then every elementwise block that
    only reads one block's output into that block, where TVM allows it. A step after a
    reduction that a broadcast reads stays a block (:func:`broadcasts`)."""
    blocks = sch.get_child_blocks(root)
    first = next((i for i, b in enumerate(blocks) if _reduce_count(sch, b)), len(blocks))
    for i, b in enumerate(blocks[:-1]):
        if not _reduce_count(sch, b) and not (i > first and broadcasts(sch, b)):
            try:
                sch.compute_inline(b)
            except Exception:  # an output, or not inlinable: stays a block
                pass
    for b in reversed(sch.get_child_blocks(root)):
        if not _reduce_count(sch, b):
            try:
                sch.reverse_compute_inline(b)
            except Exception:  # its producer is a reduction, or not inlinable
                pass


def elements(sch, block) -> int:
    """How many elements ``block`` writes (its output buffer's)."""
    n = 1
    for d in sch.get(block).writes[0].source.shape:
        n *= int(d)
    return n


def broadcasts(sch, block) -> bool:
    """Whether a reader of ``block`` writes more elements than ``block`` does: it reads
    each of them several times. Inlined into that reader, ``block`` would be computed
    that many times: squeeze-and-excitation's ``x * sigmoid(fc(pool(x)))`` computed the
    sigmoid (with the fully connected layer's bias) for every element of the feature
    map, 3,136 times each on EfficientNet's 56x56x144 map (179 us of a kernel a plain
    product with the map does in a third of that)."""
    return any(elements(sch, c) > elements(sch, block) for c in sch.get_consumers(block))


def schedule_broadcast(sch, blocks: list, lanes: int) -> None:
    """Schedule ``blocks``, the steps after a product from the first that writes more
    elements than it (:func:`broadcasts`), as one elementwise loop nest after the
    product's: each step inlined into the last where TVM allows it."""
    for b in blocks[:-1]:
        try:
            sch.compute_inline(b)
        except Exception:  # not inlinable: a loop nest of its own
            _elementwise(sch, b, lanes)
    _elementwise(sch, blocks[-1], lanes)


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _work(sch, block) -> int:
    n = 1
    for loop in sch.get_loops(block):
        n *= _extent(sch, loop)
    return n


def _elementwise(sch, block, lanes: int) -> None:
    from ._tiling import vector_width

    loops = sch.get_loops(block)
    if not loops:
        return
    work = _work(sch, block)
    inner = loops[-1]
    short = _extent(sch, inner) < lanes or \
        vector_width(_extent(sch, inner), lanes) < lanes // 2 < _extent(sch, inner)
    if short and _same_indices(sch, block):
        inner = sch.fuse(*loops)  # elementwise with a short last axis: vectors across axes
        loops = [inner]
    step = vector_width(_extent(sch, inner), lanes) if not short or len(loops) == 1 else 1
    outer = loops[:-1]
    if step > 1:
        out, vec = sch.split(inner, [None, step])
        sch.vectorize(vec)
        outer = [*outer, out]
    if outer and work >= PARALLEL_MIN_WORK:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _same_indices(sch, block) -> bool:
    """Whether ``block`` reads every buffer at the element it writes (elementwise, no
    broadcast or transpose): then its loops fused run through all buffers contiguously."""
    stmt = sch.get(block)
    write = stmt.writes[0]
    where = [str(r.min) for r in write.region]
    return all(len(r.source.shape) == len(write.source.shape)
               and [str(x.min) for x in r.region] == where for r in stmt.reads)


def _divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _padded_rows(rows: int, most: int) -> int:
    """The rows of the register tile to pad ``rows`` for (at most ``most``), or 0 where
    a divisor of ``rows`` already gives a tile of ``most // 2`` rows or more: the
    tallest tile whose padding adds at most a quarter (13 tokens: 4 x 4 = 16)."""
    if rows <= most or _divisor_at_most(rows, most) >= most // 2:
        return 0
    return next((r for r in range(most, most // 2 - 1, -1) if -rows % r <= rows / 4), 0)


def _rows_axis(extents: list):
    """Which of a product's output axes (``extents``, the columns last) the register
    tile's rows run along: the innermost other one longer than 1 (a linear layer over
    tokens writes [tokens, 1, features]); None if there is none."""
    return next((k for k in range(len(extents) - 2, -1, -1) if extents[k] > 1), None)


def _pad_to_tiles(sch, block, lanes: int, tile: tuple):
    """For a reduction whose output columns no vector divides, or whose rows no register
    tile's height does (a ViT's 197 tokens, for both), its computation padded to whole
    tiles (``pad_einsum``: the operands copied into zero-padded buffers, the padded
    result cut back): (reduction block, blocks after it) to schedule, the operands'
    padding vectorized on its own. None, with ``sch`` unchanged, where the tiles fit as
    they are or the block is not a plain product of its inputs. ``block`` is the first
    block of ``sch`` (:func:`default_schedule` calls it so); ``tile``: the largest
    register tile, (rows, vectors)."""
    from ._tiling import vector_width

    stmt = sch.get(block)
    kinds = [int(iv.iter_type) for iv in stmt.iter_vars]
    spatial = [k for k, kind in enumerate(kinds) if kind == 0]
    if not spatial:
        return None
    factors = [1] * len(kinds)
    last = spatial[-1]
    width = int(stmt.iter_vars[last].dom.extent)
    if width > lanes and vector_width(width, lanes) < lanes // 2:
        # The widest register tile (up to tile[1] vectors) that pads at most 15%:
        # for 197 columns 224 (two vectors of 16) ran 20% faster than 208, and 240 slower.
        factors[last] = lanes * next(v for v in range(tile[1], 0, -1)
                                     if -width % (lanes * v) <= 0.15 * width or v == 1)
    at = _rows_axis([int(stmt.iter_vars[k].dom.extent) for k in spatial])
    depth = int(stmt.iter_vars[len(kinds) - 1].dom.extent) if kinds[-1] != 0 else 0
    rows = int(stmt.iter_vars[spatial[at]].dom.extent) if at is not None else 0
    height = _padded_rows(rows, tile[0])
    if height:
        # A register tile of several rows, where the padded copy of the rows' operand
        # (along the reduction) is vectorized: attention's probabilities @ V (197 x 197
        # @ 197 x 64) ran 174 us padded, whose copy ran scalar, and 129 us not. So a
        # reduction no vector divides is padded to whole vectors too where that adds
        # little (197 to 208): then the same product ran 151 us, against 224 us with its
        # rows unpadded (one thread, a 4 x 3 tile).
        if vector_width(depth, lanes) >= lanes // 2:
            factors[spatial[at]] = height
        elif depth > lanes and -depth % lanes <= 0.1 * depth:
            factors[spatial[at]] = height
            factors[len(kinds) - 1] = lanes
    if factors == [1] * len(kinds):
        return None
    name = stmt.name_hint
    try:
        sch.pad_einsum(block, factors)
    except Exception:  # not an einsum (TVM checks): scheduled unpadded
        return None
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    names = [sch.get(b).name_hint for b in blocks]
    at = names.index(name)
    for b in blocks[:at]:  # the zero-padded copies of the operands (the product was first)
        _elementwise(sch, b, lanes)
    after = blocks[at + 1:]
    if after:  # the copy of the padded result into the output: into its first reader
        try:
            sch.compute_inline(after[0])
            after = sch.get_child_blocks(root)[at + 1:]
        except Exception:  # the output itself: stays a block
            pass
    return sch.get_sblock(name), after


def _reduction(sch, block, after: list, lanes: int, tile: tuple) -> None:
    from ._tiling import vector_width

    stmt = sch.get(block)
    kinds = [int(iv.iter_type) for iv in stmt.iter_vars]
    loops = sch.get_loops(block)
    if len(loops) != len(kinds) or kinds != sorted(kinds) or kinds[0] != 0:
        raise ValueError("not a reduction with its spatial loops outermost")
    n_spatial = kinds.count(0)
    spatial, reduce = list(loops[:n_spatial]), list(loops[n_spatial:])
    work = _work(sch, block)
    at = _rows_axis([_extent(sch, loop) for loop in spatial])
    cols = spatial[-1]
    width = _extent(sch, cols)
    step = vector_width(width, lanes)
    tile_outer, tile_inner = [], []
    rows = _divisor_at_most(_extent(sch, spatial[at]), tile[0]) if at is not None else 1
    if step > 1:
        # A tile of one row (a classifier's one image) takes as many columns as a full
        # tile holds, in half vectors where whole ones do not divide them: 1280 x 1000
        # with cold weights, one thread, ran 0.59 ms with one half vector per tile and
        # 0.51 ms with five.
        most = tile[1] * (lanes // step if rows == 1 else 1)
        per = _divisor_at_most(width // step, most)
        co, cu, cv = sch.split(cols, [None, per, step])
        tile_outer.append(co)
        tile_inner += [cu, cv]
    else:
        tile_outer.append(cols)
    if at is not None:
        ro, ri = sch.split(spatial[at], [None, rows])
        tile_inner = [ri, *tile_inner]
        spatial = [*spatial[:at], ro, *spatial[at + 1:-1]]
    else:
        spatial = spatial[:-1]
    outer = [*spatial, *tile_outer]
    sch.reorder(*outer, *reduce, *tile_inner)
    tile = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if work >= PARALLEL_MIN_MACS:
        sch.parallel(tile)
    for loop in tile_inner[:-1]:
        sch.unroll(loop)
    if step > 1:
        sch.vectorize(tile_inner[-1])
    sch.decompose_reduction(block, reduce[0] if reduce else tile_inner[0])
    per_tile = True
    size = elements(sch, block)
    for b in after:
        if elements(sch, b) > size:  # a broadcast of the result: after the product
            per_tile = False
        if per_tile:
            try:
                sch.reverse_compute_at(b, tile)
                _vectorize_inner(sch, b, lanes)
                continue
            except Exception:  # reads outputs of other tiles (a GRU's gates, split in two)
                per_tile = False
        _elementwise(sch, b, lanes)  # then it, and what follows, run after the product


def _vectorize_inner(sch, block, lanes: int) -> None:
    from ._tiling import vectorize

    loops = sch.get_loops(block)
    if loops:
        vectorize(sch, loops[-1], lanes)


def _nan_kept(f):
    """``f`` with NaN kept: the approximations clamp their input (fast_erf(NaN) is 1);
    NaN stays NaN, as in the exact functions and ONNX Runtime. A select on the NaN test
    itself: ``topi.where`` casts the condition to int64 and compares, which LLVM does not
    fold away, and a float32 softmax took twice as long."""
    from tvm import te, tirx

    def kept(x):
        y = f(x)
        return te.compute(x.shape, lambda *i: tirx.Select(tirx.isnan(x(*i)), x(*i), y(*i)),
                          name="nan_kept")

    return kept


def fast_sigmoid(x):
    """float32 sigmoid of the TE tensor ``x`` through ``topi.fast_exp`` (see
    :func:`fast_math`)."""
    from tvm import topi

    def sigmoid(v):
        return topi.divide(1.0, topi.add(1.0, topi.fast_exp(topi.negative(v))))

    return _nan_kept(sigmoid)(x)


def fast_tanh(x):
    """float32 tanh of the TE tensor ``x`` through ``topi.fast_tanh`` (see
    :func:`fast_math`)."""
    from tvm import topi

    return _nan_kept(topi.fast_tanh)(x)


def fast_math(mod):
    """``mod`` with float32 ``sigmoid``, ``tanh``, ``erf`` and ``gelu`` (through erf)
    computed by TVM's polynomial approximations (``topi.fast_exp``, ``fast_tanh``,
    ``fast_erf``: about 1e-7 relative error in float32), which vectorize; the libm calls
    they replace run one element at a time and made EfficientNet's SiLU epilogues cost
    several times their convolutions. ONNX Runtime's CPU kernels approximate them too.
    Softmax (attention's, a classifier's) uses ``fast_exp`` on ``x - max(x)`` too: NaN
    stays NaN, and an entry masked with -inf still gets probability 0.

    After layout conversion: the kernels this emits are opaque to it.
    """
    import tvm
    from tvm import relax, te, tirx, topi
    from tvm.relax.expr_functor import PyExprMutator, mutator

    def gelu(x):  # as TVM legalizes nn.gelu: x * (0.5 + erf(x / sqrt(2)) * 0.5)
        return topi.multiply(x, topi.add(0.5, topi.multiply(
            topi.fast_erf(topi.multiply(x, 0.7071067811865476)), 0.5)))

    def softmax(x, axis):
        ndim = len(x.shape)
        n = int(x.shape[axis])
        pad = -n % _ROW_VECTOR if axis % ndim == ndim - 1 and n > _ROW_VECTOR else 0
        if pad:  # rows of whole vectors, whose reductions vectorize (_row_reductions)
            xp = topi.nn.pad(x, [0] * ndim, [0] * (ndim - 1) + [pad], pad_value=float("-inf"))
        else:
            xp = x
        # The row's maximum counts NaN as +inf: then (as for a row holding +inf, or only
        # -inf) max - max is NaN, and so is every probability of the row, as in ONNX
        # Runtime; otherwise it is 0. The exponentials need no NaN test of their own
        # (fast_exp clamps NaN to a number): testing each one doubled the softmax's time.
        top = topi.max(te.compute(xp.shape, lambda *i: tirx.Select(
            tirx.isnan(xp(*i)), tirx.const(float("inf"), "float32"), xp(*i)), name="nan_as_inf"),
            axis=axis, keepdims=True)
        # Below exp's range fast_exp gives 0, as exp does: the -inf padding and masked
        # entries get probability 0.
        e = topi.fast_exp(topi.subtract(xp, top))
        # One division per row: a vector division costs about as much per element as
        # the rest of the softmax.
        scale = topi.add(topi.divide(1.0, topi.sum(e, axis=axis, keepdims=True)),
                         topi.subtract(top, top))
        out = topi.multiply(e, scale)
        return te.compute(x.shape, lambda *i: out(*i), name="unpad") if pad else out

    fast = {"relax.sigmoid": fast_sigmoid, "relax.tanh": fast_tanh,
            "relax.erf": _nan_kept(topi.fast_erf), "relax.nn.gelu": _nan_kept(gelu),
            "relax.nn.softmax": softmax}

    @mutator
    class Fast(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            name = getattr(call.op, "name", None)
            ty = call.args[0].ty if name in fast else None
            if isinstance(ty, relax.TensorType) and str(ty.dtype) == "float32":
                extra = [int(call.attrs.axis)] if name == "relax.nn.softmax" else []
                return self.builder_.call_te(fast[name], call.args[0], *extra,
                                             primfunc_name_hint=f"fast_{name.rsplit('.', 1)[1]}")
            return call

    mutated = Fast(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            mutated.builder_.update_func(gv, mutated.visit_expr(func))
    return mutated.builder_.get()
