"""Winograd convolution for 3x3 stride-1 layers on CPUs (build machine only).

A 3x3 convolution computed directly spends 9 multiply-adds per output and input channel.
Winograd's minimal filtering algorithm F(m x m, 3 x 3) (Lavin and Gray, "Fast Algorithms
for Convolutional Neural Networks", 2015) computes each m x m output tile from an
(m + 2) x (m + 2) input tile with (m + 2)^2 / m^2 of them: 4 instead of 9 for F(2x2), 2.25
for F(4x4). The work becomes

1. weights: ``U = G w G^T`` per (input, output) channel pair, done once at compile time;
2. input: ``V = B^T d B`` per input tile and channel;
3. (m + 2)^2 independent matrix products ``M[a, b] = V[a, b] @ U[a, b]`` over the input
   channels, the bulk of the work, scheduled like the direct convolution's register tile
   (:mod:`.schedules`; both take their tile sizes from :mod:`._tiling`): a block of tiles
   x a block of output channels held in vector registers, weights packed in the order the
   tile reads them;
4. output: ``Y = A^T M A`` per tile, followed by the layer's fused epilogue (shift,
   activation, residual add).

It pays most where the matrix products dominate: large feature maps with up to a few
hundred channels. Deep 7x7 layers with 512 channels gain little or nothing: their
transformed weights (16 or 36 per channel pair instead of 9) cost memory traffic, and a
7x7 map wastes part of its edge tiles. Larger tiles also lose float32 precision (F(4x4)'s
transforms multiply by up to 8 and 1/24) and take more weight memory, so the compiler
measures direct, F(2x2) and F(4x4) per layer shape when it tunes and picks the fastest,
a larger tile only by a clear margin (``compiler.WINOGRAD_MARGIN``); untuned builds use
:func:`default_tile`.

:func:`rewrite` replaces eligible ``relax.nn.conv2d`` calls (channels-last, see
``compiler.CPU_CONV_LAYOUT``); :func:`candidates` and :func:`apply` schedule the fused kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ._tiling import register_tiles, vector_split, vectorize

#: Output tile sizes m of F(m x m, 3 x 3) this module computes.
TILES = (2, 4)

#: (A^T, G, B^T) of F(m, 3) with interpolation points 0, +-1 (m = 2) and 0, +-1, +-2 (m = 4).
_MATRICES = {
    2: (np.array([[1, 1, 1, 0],
                  [0, 1, -1, -1]], dtype=float),
        np.array([[1, 0, 0],
                  [1 / 2, 1 / 2, 1 / 2],
                  [1 / 2, -1 / 2, 1 / 2],
                  [0, 0, 1]], dtype=float),
        np.array([[1, 0, -1, 0],
                  [0, 1, 1, 0],
                  [0, -1, 1, 0],
                  [0, 1, 0, -1]], dtype=float)),
    4: (np.array([[1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 2, -2, 0],
                  [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], dtype=float),
        np.array([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], dtype=float),
        np.array([[4, 0, -5, 0, 1, 0],
                  [0, -4, -4, 1, 1, 0],
                  [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0],
                  [0, 4, 0, -5, 0, 1]], dtype=float)),
}

#: Block names of the kernel :func:`conv` builds.
PAD, INPUT, GEMM, OUTPUT = ("winograd_pad", "winograd_input", "winograd_gemm",
                            "winograd_output")
#: Fewest input channels worth transforming (an RGB first layer is not).
_MIN_CHANNELS = 8


def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T, G, B^T) of F(m x m, 3 x 3)."""
    if m not in _MATRICES:
        raise ValueError(f"Winograd tile size must be one of {TILES}; got {m!r}")
    return _MATRICES[m]


@dataclass(frozen=True)
class ConvSignature:
    """A convolution :func:`rewrite` can replace: NHWC input, 3x3 OHWI weights, stride 1."""

    height: int
    width: int
    in_channels: int
    out_channels: int
    padding: tuple[int, int, int, int]  #: top, left, bottom, right

    @property
    def out_height(self) -> int:
        return self.height + self.padding[0] + self.padding[2] - 2

    @property
    def out_width(self) -> int:
        return self.width + self.padding[1] + self.padding[3] - 2

    def __str__(self) -> str:
        pad = ",".join(str(p) for p in self.padding)
        return (f"{self.height}x{self.width}x{self.in_channels}->{self.out_channels} "
                f"pad {pad}")


def signature(call) -> Optional[ConvSignature]:
    """The signature of the ``relax.nn.conv2d`` call ``call``, or None if it is not one
    Winograd computes here (float32, batch 1, 3x3, stride 1, no dilation, one group)."""
    attrs = call.attrs
    x, w = call.args[0].ty, call.args[1].ty
    if (attrs.data_layout, attrs.kernel_layout, str(attrs.out_layout or "NHWC")) != \
            ("NHWC", "OHWI", "NHWC") or int(attrs.groups) != 1:
        return None
    if [int(s) for s in attrs.strides] != [1, 1] or [int(d) for d in attrs.dilation] != [1, 1]:
        return None
    if x.dtype != "float32" or w.dtype != "float32" or str(attrs.out_dtype) not in \
            ("", "None", "void", "float32") or x.shape is None or w.shape is None:
        return None
    try:
        n, h, wd, c = (int(d) for d in x.shape.values)
        k, kh, kw, ci = (int(d) for d in w.shape.values)
    except TypeError:  # a symbolic dimension
        return None
    if n != 1 or (kh, kw) != (3, 3) or ci != c or c < _MIN_CHANNELS:
        return None
    pad = tuple(int(p) for p in attrs.padding)
    sig = ConvSignature(h, wd, c, k, pad)
    if sig.out_height < 1 or sig.out_width < 1:
        return None
    return sig


def default_tile(sig: ConvSignature, lanes: int) -> int:
    """The tile size an untuned build uses for ``sig`` on ``lanes``-float vectors (0: the
    direct convolution).

    From the compiler's cold-weight measurements on a 2-core AVX-512 machine (each way with
    its best template schedule, 2 threads): F(4x4) 0.66 ms against 1.21 direct for 56x56
    maps with 64 channels (0.24 against 0.36 at SqueezeNet's 55x55x16->64); F(2x2) 0.77
    against 1.19 at 14x14x256, where F(4x4)'s 36 transformed weights per channel pair cost
    more memory traffic than its multiplies save (1.00); at 7x7x512 nothing beats the
    direct kernel (1.76, F(2x2) 1.72, F(4x4) 3.17).
    """
    if sig.out_channels % lanes:
        return 0  # the direct kernel's half-vector tiles do better
    size, weights = min(sig.out_height, sig.out_width), sig.in_channels * sig.out_channels
    if size >= 16 and weights <= 128 * 128:
        return 4
    if size >= 8 and weights <= 256 * 256:
        return 2
    return 0


# ---------------------------------------------------------------------------------------
# Computation (TE)


def _linear(coefficients, terms):
    """sum(c * t), with the zero terms left out and the unit coefficients not multiplied."""
    from tvm import tirx

    expr = None
    for c, t in zip(coefficients, terms):
        if c == 0:
            continue
        v = t if abs(c) == 1 else t * tirx.const(abs(c), t.dtype)
        if expr is None:
            expr = v if c > 0 else -v
        else:
            expr = expr + v if c > 0 else expr - v
    return expr if expr is not None else tirx.const(0.0, terms[0].dtype)


def _transform(matrix, patch, index):
    """``(matrix @ P @ matrix.T)[index // r, index % r]`` for the square patch ``P`` given
    as the flat list ``patch`` of its terms (``r`` rows in ``matrix``): every entry written
    out by :func:`_linear`, the one wanted selected by ``index``. The selections fold away
    once ``index`` is an unrolled constant."""
    from tvm import tirx

    rows, n = matrix.shape
    exprs = [_linear([matrix[p, i] * matrix[q, j] for i in range(n) for j in range(n)], patch)
             for p in range(rows) for q in range(rows)]
    out = exprs[-1]
    for k in range(len(exprs) - 2, -1, -1):
        out = tirx.Select(index == k, exprs[k], out)
    return out


def transform_weights(w, m: int):
    """``U[a, b, c, k] = (G w[k, :, :, c] G^T)[a, b]`` for OHWI weights ``w`` (TE)."""
    from tvm import te

    _, g, _ = matrices(m)
    alpha = m + 2
    k_, _, _, c_ = w.shape
    return te.compute(
        (alpha, alpha, c_, k_),
        lambda a, b, c, k: _transform(g, [w[k, i, j, c] for i in range(3) for j in range(3)],
                                      a * alpha + b),
        name="winograd_weight")


def conv(x, u, m: int, padding: tuple[int, int, int, int]):
    """The convolution of NHWC ``x`` with transformed weights ``u`` (TE), NHWC out."""
    from tvm import te, tirx

    at, _, bt = matrices(m)
    alpha = m + 2
    _, h, w, c = (int(d) for d in x.shape)
    k = int(u.shape[3])
    top, left, bottom, right = padding
    oh, ow = h + top + bottom - 2, w + left + right - 2
    th, tw = -(-oh // m), -(-ow // m)  # tiles down and across

    padded = te.compute(
        (th * m + 2, tw * m + 2, c),
        lambda i, j, ch: tirx.if_then_else(
            tirx.all(i >= top, i < h + top, j >= left, j < w + left),
            x[0, i - top, j - left, ch], tirx.const(0.0, x.dtype)), name=PAD)

    def transform_input(a, b, ty, tx, ch):
        d = [padded[ty * m + i, tx * m + j, ch] for i in range(alpha) for j in range(alpha)]
        return _transform(bt, d, a * alpha + b)

    v = te.compute((alpha, alpha, th, tw, c), transform_input, name=INPUT)
    rc = te.reduce_axis((0, c), name="rc")
    gemm = te.compute((alpha, alpha, th, tw, k),
                      lambda a, b, ty, tx, f: te.sum(v[a, b, ty, tx, rc] * u[a, b, rc, f],
                                                     axis=rc), name=GEMM)

    def transform_output(n, i, j, f):
        prods = [gemm[a, b, i // m, j // m, f] for a in range(alpha) for b in range(alpha)]
        return _transform(at, prods, (i % m) * m + j % m)

    return te.compute((1, oh, ow, k), transform_output, name=OUTPUT)


def rewrite(mod, choose: Callable[[ConvSignature], int]):
    """Replace each eligible conv2d in ``mod`` by Winograd F(m x m, 3x3), m = ``choose(sig)``
    (0 keeps the conv2d). The weight transform depends on the weights alone, so
    ``LiftTransformParams`` moves it to compile time."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    # The kernel is a reduction followed by elementwise work: the epilogue after it fuses
    # in, as it does after a conv2d (relax's OpPatternKind kOutEWiseFusable).
    out_ewise_fusable = 4

    @mutator
    class Rewriter(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call, "op", None) != conv2d:
                return call
            sig = signature(call)
            m = choose(sig) if sig is not None else 0
            if not m:
                return call
            if m not in TILES:
                raise ValueError(f"Winograd tile size must be one of {TILES} or 0; "
                                 f"got {m!r} for {sig}")
            u = self.builder_.emit_te(transform_weights, call.args[1], m,
                                      primfunc_name_hint=f"winograd{m}_weight")
            out = self.builder_.call_te(conv, call.args[0], u, m, sig.padding,
                                        primfunc_name_hint=f"conv2d_winograd{m}")
            kernel = out.args[0]
            self.builder_.update_func(kernel, self.builder_.get()[kernel].with_attr(
                "op_pattern", out_ewise_fusable))
            return out

    rewriter = Rewriter(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()


def signatures(mod) -> list[ConvSignature]:
    """The distinct signatures of ``mod``'s eligible convolutions, in order of appearance."""
    found: list[ConvSignature] = []

    def note(sig):
        if sig not in found:
            found.append(sig)
        return 0

    rewrite(mod, note)
    return found


# ---------------------------------------------------------------------------------------
# Schedule


@dataclass(frozen=True)
class WinogradConfig:
    """One schedule of a Winograd kernel: the matrix products' register tile."""

    tile: int           #: m of F(m x m, 3 x 3) (fixed by the kernel; recorded for reports)
    x_block: int        #: input tiles per register tile
    f_block: int        #: output channels per register tile (a multiple of ``lanes``)
    lanes: int          #: vector width, in elements

    def __str__(self) -> str:
        return f"winograd F({self.tile}x{self.tile}), tile {self.x_block}x{self.f_block} " \
               f"({self.lanes} lanes)"


@dataclass(frozen=True)
class WinogradShape:
    """What the schedule needs to know of a Winograd kernel."""

    tile: int           #: m of F(m x m, 3 x 3)
    tiles_across: int   #: output tiles per row
    out_channels: int


def kernel_shape(func) -> Optional[WinogradShape]:
    """The Winograd kernel ``func`` computes, or None when it is something else."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blocks = {sch.get(b).name_hint: sch.get(b)
              for b in sch.get_child_blocks(sch.get_sblock("root"))}
    if not {PAD, INPUT, GEMM, OUTPUT} <= set(blocks):
        return None
    ext = [int(iv.dom.extent) for iv in blocks[GEMM].iter_vars]  # a, b, ty, tx, k, rc
    return WinogradShape(ext[0] - 2, ext[3], ext[4])


def candidates(func, lanes: int, registers: int, limit: int = 8) -> list[WinogradConfig]:
    """Register tiles worth measuring for the Winograd kernel ``func``, best guess first
    (none if ``func`` is not one)."""
    shape = kernel_shape(func)
    if shape is None:
        return []
    tiles = register_tiles(shape.tiles_across, shape.out_channels, lanes, registers,
                           depthwise=False)
    return [WinogradConfig(shape.tile, x, f, width) for _, x, f, width in tiles][:limit]


def apply(sch, config: WinogradConfig) -> None:
    """Schedule the Winograd kernel in ``sch``: padding and the input transform
    parallel over tile rows and vectorized over channels; the products register-tiled
    and parallel over (transform element, tile row, tile block, channel block); the output
    transform inlined into the epilogue, vectorized over output channels."""
    from tvm.s_tir import meta_schedule as ms

    m, lanes = config.tile, config.lanes
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    epilogue = blocks[names.index(OUTPUT):]
    for b in epilogue[:-1]:
        sch.compute_inline(b)
    out = epilogue[-1]

    pad = sch.get_sblock(PAD)
    rows, *_, channels = sch.get_loops(pad)
    sch.parallel(rows)
    vectorize(sch, channels, lanes)

    v = sch.get_sblock(INPUT)
    a, b, ty, tx, ch = sch.get_loops(v)
    co, cv = vector_split(sch, ch, lanes)
    sch.reorder(ty, tx, co, a, b, cv)
    sch.parallel(ty)
    sch.unroll(a)
    sch.unroll(b)
    if cv is not None:
        sch.vectorize(cv)

    gemm = sch.get_sblock(GEMM)
    a, b, ty, tx, f, rc = sch.get_loops(gemm)
    xo, xi = sch.split(tx, [None, config.x_block])
    fo, fi = sch.split(f, [None, config.f_block])
    fu, fv = sch.split(fi, [None, lanes])
    sch.reorder(a, b, ty, xo, fo, rc, xi, fu, fv)
    sch.parallel(sch.fuse(a, b, ty, xo, fo))
    sch.unroll(xi)
    sch.unroll(fu)
    sch.vectorize(fv)
    sch.decompose_reduction(gemm, rc)

    n, i, j, f = sch.get_loops(out)
    io, ii = sch.split(i, [None, m])
    jo, ji = sch.split(j, [None, m])
    fo, fv = sch.split(f, [None, lanes])
    sch.reorder(n, io, jo, fo, ii, ji, fv)
    sch.parallel(sch.fuse(n, io))
    sch.unroll(ii)
    sch.unroll(ji)
    sch.vectorize(fv)
    # Pack the transformed weights in the order the products read them (compile time).
    sch.enter_postproc()
    ms.postproc.RewriteLayout().apply(sch)
