"""Corrections to TVM's PyTorch frontend (``tvm.relax.frontend.torch``).

:data:`CONVERT_MAP` goes to ``from_exported_program(custom_convert_map=...)``, the
frontend's hook for converters of one's own; each entry replaces a converter of TVM 0.27
that computes wrong results:

- ``select.int`` (``y[:, -1]``, ``x.select(dim, -1)``; the last time step of an RNN's
  output is the usual input to a sequence classifier's head): TVM passes the index to
  ``relax.op.take`` unchanged, in take's unchecked mode, so a negative index reads
  memory before the tensor: wrong numbers, or a crash. Here a negative index counts
  from the end, as in PyTorch, and one out of range is refused.

Build machine only: the converters build Relax expressions.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import CompileError

__all__ = ["CONVERT_MAP"]


def _select(node: Any, importer: Any):
    """``aten.select.int(x, dim, index)``: ``x`` indexed at ``index`` along ``dim``, that
    dimension dropped."""
    from tvm import relax

    x = importer.env[node.args[0]]
    shape = list(x.ty.shape.values)
    dim, index = int(node.args[1]) % len(shape), node.args[2]
    try:
        size = int(shape[dim])
    except TypeError:  # a symbolic dimension
        raise CompileError(f"node {node.name}: select on dimension {dim} of dynamic size "
                           f"{shape[dim]}; the edge runtime serves static shapes") from None
    if not isinstance(index, int) or not -size <= index < size:
        raise CompileError(f"node {node.name}: select index {index!r} is not an integer "
                           f"in range for dimension {dim} of size {size}")
    index %= size
    return importer.block_builder.emit(
        relax.op.take(x, relax.const(index, "int64"), dim, mode="clip"))


#: torch op overload name (``aten.<name>``) to converter, the frontend's format.
CONVERT_MAP: dict[str, Callable] = {"select.int": _select}
