"""Register tiles and vector splits, shared by the direct (:mod:`.schedules`) and
Winograd (:mod:`.winograd`) convolution schedules and the default ones (:mod:`.generic`)
(build machine only).

Both schedules hold a block of outputs by a block of output channels in vector registers
and split channel loops into whole vectors; the sizes come from here, so the two search
the same tiles and vectorize the same way.
"""

from __future__ import annotations

#: Vector registers a tile may keep busy as accumulators: the rest hold the broadcast
#: input and the weight vectors.
SPARE_REGISTERS = 4


def _divisors(n: int, lo: int, hi: int) -> list[int]:
    return [d for d in range(lo, min(n, hi) + 1) if n % d == 0]


def register_tiles(width: int, channels: int, lanes: int, registers: int,
                   depthwise: bool) -> list[tuple[float, int, int, int]]:
    """(score, x_block, f_block, vector width) of the register tiles that fit an output of
    ``width`` columns by ``channels`` channels, the most promising first."""
    vector = vector_width(channels, lanes)
    if vector == 1:
        return []
    budget = registers - SPARE_REGISTERS
    f_blocks = [f for f in _divisors(channels, vector, 4 * lanes) if f % vector == 0]
    # Column blocks that divide the width, and small ones that leave a (predicated) tail
    # for widths with no useful divisor (13, 55, 111...).
    x_blocks = sorted(set(_divisors(width, 2, 16)) |
                      {x for x in range(3, 9) if x < width}) or [1]
    tiles = []
    for f in f_blocks:
        for x in x_blocks:
            acc = x * f // vector
            if acc > budget:
                continue
            tail = (-width % x) / width  # wasted fraction
            # Favour tiles that fill the registers and broadcast each input to 2+ vectors
            # (for depthwise kernels every load is a vector: the tile width matters less).
            score = acc + (0 if depthwise else 4 * min(f // vector, 3)) - 40 * tail
            tiles.append((score, x, f, vector))
    tiles.sort(key=lambda t: (-t[0], t[1], t[2]))
    return tiles


def vector_width(n: int, lanes: int) -> int:
    """Elements per vector for ``n`` channels: ``lanes``, or half as many where ``lanes``
    does not divide ``n``; 1 (scalar) where neither does."""
    return next(v for v in (lanes, lanes // 2, 1) if n % v == 0)


def vector_split(sch, loop, lanes: int):
    """``loop`` split for vectors of :func:`vector_width` elements: (outer, inner), inner
    None where no vector fits."""
    extent = int(sch.get(loop).extent)
    step = vector_width(extent, lanes)
    if step == 1:
        return loop, None
    return sch.split(loop, [None, step])


def vectorize(sch, loop, lanes: int) -> None:
    """Vectorize ``loop`` by :func:`vector_split`'s inner loop, if it has one."""
    _, inner = vector_split(sch, loop, lanes)
    if inner is not None:
        sch.vectorize(inner)


def vector_config(target) -> tuple[int, int]:
    """(float32 lanes, vector registers) of an LLVM CPU target."""
    from tvm.target import codegen

    bits = int(codegen.llvm_get_vector_width(target))
    lanes = max(4, bits // 32)
    triple = str(target.attrs.get("mtriple", ""))
    # AVX-512 and AArch64 have 32 vector registers; AVX2 and 32-bit ARM NEON 16.
    registers = 32 if lanes >= 16 or triple.startswith("aarch64") else 16
    return lanes, registers
