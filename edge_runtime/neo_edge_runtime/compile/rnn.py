"""ONNX's recurrent operators (LSTM, GRU, RNN) for TVM's Relax ONNX importer.

TVM's ONNX importer (``tvm.relax.frontend.onnx``) has no converter for ``LSTM``, ``GRU``
or ``RNN``. The edge runtime serves static shapes, so the sequence length is known when
the model is imported: each operator is unrolled over time into matrix products and
element-wise Relax operators, following the operator specifications
(https://onnx.ai/onnx/operators/onnx__LSTM.html, ``onnx__GRU.html``, ``onnx__RNN.html``):

- directions ``forward``, ``reverse`` and ``bidirectional``; ``layout`` 0 and 1;
- the optional inputs ``B``, ``sequence_lens`` (per-batch lengths, run-time values:
  steps past a sequence's length keep its state and write zeros to ``Y``, as ONNX
  Runtime does), ``initial_h``, ``initial_c`` and LSTM's peepholes ``P``;
- ``activations`` (every function the specification lists, with ``activation_alpha``
  and ``activation_beta`` consumed in order by the functions that take them),
  ``clip``, ``hidden_size``, LSTM's ``input_forget`` and GRU's ``linear_before_reset``;
- the outputs ``Y``, ``Y_h`` and (LSTM) ``Y_c``, any of them unused.

The input projections of all time steps are one matrix product per direction; each step
then adds the recurrent product and applies the gates.

:func:`onnx_converters` adds the converters to TVM's importer for the duration of a
``with`` block (TVM's importer reads its table of converters from the module function
``_get_convert_map`` on every import and offers no registration hook). A converter TVM
itself has is left in place: it comes with the importer it was written for.

Build machine only: the converters build Relax expressions (TVM is imported when a
converter runs, not when this module is imported).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Optional

from ..errors import CompileError

__all__ = ["onnx_converters", "CONVERTERS"]

#: Each activation's (takes alpha, takes beta, default alpha, default beta), as ONNX
#: Runtime reads them: the specification gives the defaults of "the corresponding ONNX
#: operators", which ONNX Runtime follows for LeakyRelu, HardSigmoid and Elu; for
#: ThresholdedRelu (whose operator defaults alpha to 1), Affine and ScaledTanh (operators
#: since removed from ONNX) it uses 0. ONNX Runtime is what a model's outputs are
#: checked against, so its values are the ones that keep them equal.
_ACTIVATIONS: dict[str, tuple[bool, bool, float, float]] = {
    "relu": (False, False, 0.0, 0.0),
    "tanh": (False, False, 0.0, 0.0),
    "sigmoid": (False, False, 0.0, 0.0),
    "affine": (True, True, 0.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 0.0, 0.0),
    "scaledtanh": (True, True, 0.0, 0.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, 0.0),
    "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
}
_ACTIVATION_NAMES = ("Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu",
                     "ScaledTanh", "HardSigmoid", "Elu", "Softsign", "Softplus")


class _Converter:
    """A recurrent operator, in the form TVM's importer calls: ``get_converter(opset)``
    returns ``(bb, inputs, attr, params) -> relax.Expr``. Every opset of the three
    operators (1, 3, 7, 14, 22) is the same function: attributes an older opset lacks
    take their defaults, and ``output_sequence`` (opset 1 only) does not change the
    outputs."""

    op = ""
    #: Gates stacked in W, R and B, in the specification's order.
    gates = 1
    #: One direction's activation functions when ``activations`` is absent.
    default_activations: tuple[str, ...] = ()

    @classmethod
    def get_converter(cls, opset: int) -> Callable:
        def convert(bb, inputs, attr, params):
            return _convert(cls, bb, inputs, attr, params)
        return convert


class LSTM(_Converter):
    """ONNX LSTM (https://onnx.ai/onnx/operators/onnx__LSTM.html): gates i, o, f, c."""
    op, gates, default_activations = "LSTM", 4, ("Sigmoid", "Tanh", "Tanh")


class GRU(_Converter):
    """ONNX GRU (https://onnx.ai/onnx/operators/onnx__GRU.html): gates z, r, h."""
    op, gates, default_activations = "GRU", 3, ("Sigmoid", "Tanh")


class RNN(_Converter):
    """ONNX RNN (https://onnx.ai/onnx/operators/onnx__RNN.html): one gate."""
    op, gates, default_activations = "RNN", 1, ("Tanh",)


#: ONNX operator type to converter, in the form of TVM's ``_get_convert_map()``.
CONVERTERS: dict[str, type[_Converter]] = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}


# ---------------------------------------------------------------------------------------
# Hooking into TVM's importer

_lock = threading.Lock()
_active = 0
_stock_map: Optional[Callable[[], dict]] = None


@contextlib.contextmanager
def onnx_converters() -> Iterator[None]:
    """Within the block, TVM's ONNX importer (``tvm.relax.frontend.onnx.from_onnx``)
    converts LSTM, GRU and RNN with this module's converters.

    Blocks may nest and run in several threads at once: the importer's table is
    extended when the first block opens and restored when the last one closes.
    """
    global _active, _stock_map
    from tvm.relax.frontend.onnx import onnx_frontend

    with _lock:
        if _active == 0:
            stock = onnx_frontend._get_convert_map

            def convert_map() -> dict:
                table = stock()
                for op, converter in CONVERTERS.items():
                    table.setdefault(op, converter)
                return table

            _stock_map = stock
            onnx_frontend._get_convert_map = convert_map
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                onnx_frontend._get_convert_map = _stock_map
                _stock_map = None


# ---------------------------------------------------------------------------------------
# The conversion


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Refusal:
    """Errors naming the node: ``LSTM node '/rnn/LSTM': ...``."""

    def __init__(self, op: str, node: str):
        self.where = f"{op} node {node!r}" if node else f"an unnamed {op} node"

    def __call__(self, message: str) -> CompileError:
        return CompileError(f"{self.where}: {message}")


def _static_shape(expr, what: str, fail: _Refusal) -> list[int]:
    values = getattr(getattr(expr.ty, "shape", None), "values", None)
    if values is None:
        raise fail(f"{what} has no known shape")
    try:
        return [int(v) for v in values]
    except TypeError:
        raise fail(f"{what} has a dynamic shape {list(values)}; recurrent operators are "
                   "unrolled over a static sequence length") from None


def _activations(spec: type[_Converter], attr: dict, directions: int, dtype: str,
                 fail: _Refusal) -> list[list[Callable]]:
    """Per direction, the operator's activation functions as ``expr -> expr``."""
    names = [_text(a) for a in attr.get("activations", ())] or \
        list(spec.default_activations) * directions
    per_direction = len(spec.default_activations)
    if len(names) != per_direction * directions:
        raise fail(f"activations lists {len(names)} functions ({', '.join(names)}); "
                   f"{spec.op} with {directions} direction(s) takes "
                   f"{per_direction * directions}")
    alphas = list(attr.get("activation_alpha", ()))
    betas = list(attr.get("activation_beta", ()))
    functions = []
    for name in names:
        entry = _ACTIVATIONS.get(name.lower())
        if entry is None:
            raise fail(f"activation {name!r} is not one ONNX defines for {spec.op}; "
                       f"expected one of {', '.join(_ACTIVATION_NAMES)}")
        takes_alpha, takes_beta, alpha, beta = entry
        if takes_alpha and alphas:
            alpha = float(alphas.pop(0))
        if takes_beta and betas:
            beta = float(betas.pop(0))
        functions.append(_activation(name.lower(), alpha, beta, dtype))
    return [functions[d * per_direction:(d + 1) * per_direction] for d in range(directions)]


def _activation(name: str, alpha: float, beta: float, dtype: str) -> Callable:
    """The activation function ``name`` (the specification's formula) on Relax."""
    from tvm import relax

    op = relax.op

    def c(value: float):
        return relax.const(value, dtype)

    table: dict[str, Callable] = {
        "relu": op.nn.relu,
        "tanh": op.tanh,
        "sigmoid": op.sigmoid,
        "affine": lambda x: op.add(op.multiply(x, c(alpha)), c(beta)),
        "leakyrelu": lambda x: op.nn.leakyrelu(x, alpha),
        "thresholdedrelu": lambda x: op.where(op.greater(x, c(alpha)), x, op.zeros_like(x)),
        "scaledtanh": lambda x: op.multiply(c(alpha), op.tanh(op.multiply(c(beta), x))),
        "hardsigmoid": lambda x: op.clip(op.add(op.multiply(x, c(alpha)), c(beta)), 0.0,
                                         1.0),
        "elu": lambda x: op.where(op.greater_equal(x, c(0.0)), x,
                                  op.multiply(c(alpha), op.subtract(op.exp(x), c(1.0)))),
        "softsign": lambda x: op.divide(x, op.add(c(1.0), op.abs(x))),
        "softplus": lambda x: op.log(op.add(c(1.0), op.exp(x))),
    }
    return table[name]


def _constant(expr, params) -> Optional[Any]:
    """The numpy value of ``expr`` if it is a constant or an initializer, else None.
    ``params`` is what TVM's importer passes converters: [its nodes, its parameters
    (name to (variable, value))]."""
    import tvm
    from tvm import relax

    if isinstance(expr, tvm.ir.Constant):
        return expr.data.numpy()
    values = params[1] if isinstance(params, (list, tuple)) and len(params) > 1 else {}
    if isinstance(expr, relax.Var) and expr.name in values \
            and values[expr.name][0].same_as(expr):
        return values[expr.name][1].numpy()
    return None


def _convert(spec: type[_Converter], bb, inputs, attr: dict, params):
    """The Relax expression of one recurrent node: a tuple (Y, Y_h) or (Y, Y_h, Y_c)."""
    from tvm import relax

    op = relax.op
    fail = _Refusal(spec.op, _text(attr.get("tvm_custom", {}).get("name", "")))
    lstm, gru = spec is LSTM, spec is GRU
    x, w, r, b, seq_lens, init_h = (inputs[k] for k in range(6))
    init_c, peep = (inputs[6], inputs[7]) if lstm else (None, None)
    if x is None or w is None or r is None:
        raise fail("inputs X, W and R are required")

    dtype = str(x.ty.dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise fail(f"X is {dtype}; {spec.op} computes on floating-point tensors")
    direction = _text(attr.get("direction", b"forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise fail(f"direction must be forward, reverse or bidirectional; got {direction!r}")
    directions = 2 if direction == "bidirectional" else 1
    layout = int(attr.get("layout", 0))
    if layout not in (0, 1):
        raise fail(f"layout must be 0 or 1; got {layout}")
    x_shape = _static_shape(x, "X", fail)
    if len(x_shape) != 3:
        raise fail(f"X must be 3-D; got shape {x_shape}")
    steps, batch = (x_shape[0], x_shape[1]) if layout == 0 else (x_shape[1], x_shape[0])
    w_shape, r_shape = _static_shape(w, "W", fail), _static_shape(r, "R", fail)
    hidden = int(attr.get("hidden_size", r_shape[-1]))
    rows = spec.gates * hidden
    if w_shape[:2] != [directions, rows] or r_shape != [directions, rows, hidden]:
        raise fail(f"W {w_shape} and R {r_shape} do not fit hidden_size {hidden} with "
                   f"{directions} direction(s): expected [{directions}, {rows}, input_size] "
                   f"and [{directions}, {rows}, {hidden}]")
    activations = _activations(spec, attr, directions, dtype, fail)
    clip = attr.get("clip")
    linear_before_reset = int(attr.get("linear_before_reset", 0))
    input_forget = int(attr.get("input_forget", 0))

    emit = bb.emit

    def clipped(v):  # the specification clips the inputs of the activations
        return op.clip(v, -float(clip), float(clip)) if clip is not None else v

    def part(t, axis: int, k: int, size: int):
        """Block ``k`` of ``size`` along ``axis``."""
        return op.strided_slice(t, axes=[axis], begin=[k * size], end=[(k + 1) * size])

    def pick(t, d: int, axis: int = 0):
        """``t[d]`` along ``axis``, that axis dropped."""
        return emit(op.squeeze(part(t, axis, d, 1), axis=[axis]))

    if layout == 1:  # [batch, seq, ...] -> [seq, batch, ...]; states [batch, dirs, hidden]
        x = emit(op.permute_dims(x, [1, 0, 2]))
        init_h = emit(op.permute_dims(init_h, [1, 0, 2])) if init_h is not None else None
        init_c = emit(op.permute_dims(init_c, [1, 0, 2])) if init_c is not None else None

    # valid[t, b]: step t is within sequence b's length ([steps, batch, 1] booleans); None
    # when every sequence is known to be full length.
    valid = None
    if seq_lens is not None:
        lens = _constant(seq_lens, params)
        if lens is None or not (lens.shape == (batch,) and (lens == steps).all()):
            t = op.reshape(op.arange(0, steps, 1, dtype="int64"), [steps, 1, 1])
            valid = emit(op.less(t, op.reshape(op.astype(seq_lens, "int64"), [1, batch, 1])))

    zeros = emit(op.zeros(relax.ShapeExpr([batch, hidden]), dtype))
    ys, last_h, last_c = [], [], []
    for d in range(directions):
        f = activations[d]
        r_t = emit(op.permute_dims(pick(r, d), [1, 0]))     # [hidden, gates * hidden]
        # The input projections of every step at once, with the biases that are added
        # to them unchanged: [steps, batch, gates * hidden].
        xw = op.matmul(x, op.permute_dims(pick(w, d), [1, 0]))
        rb = rb_h = None
        if b is not None:
            b_d = pick(b, d)                                 # [Wb..., Rb...]
            wb, rb = part(b_d, 0, 0, rows), emit(part(b_d, 0, 1, rows))
            if gru:  # Rbh is added inside the reset gate's term
                rb_h = emit(part(rb, 0, 2, hidden))
                rb = op.concat([part(rb, 0, 0, 2 * hidden),
                                op.zeros(relax.ShapeExpr([hidden]), dtype)], axis=0)
            xw = op.add(xw, op.add(wb, rb))
        xs = _split(bb, emit(xw), steps, axis=0)
        h = pick(init_h, d) if init_h is not None else zeros
        c = (pick(init_c, d) if init_c is not None else zeros) if lstm else None
        if peep is not None:
            p_i, p_o, p_f = (emit(part(pick(peep, d), 0, k, hidden)) for k in range(3))
        if gru:
            r_zr, r_h = emit(part(r_t, 1, 0, 2 * hidden)), emit(part(r_t, 1, 2, hidden))

        outs: list = [None] * steps
        for t in (range(steps)[::-1] if direction == "reverse" or d == 1 else range(steps)):
            x_t = op.squeeze(xs[t], axis=[0])                # [batch, gates * hidden]
            c_new = None
            if lstm:
                # Each gate a slice of the step's product, not a split: slices fuse into
                # the gates' kernel, a split is a kernel of its own each step.
                gates = emit(op.add(x_t, op.matmul(h, r_t)))
                i_g, o_g, f_g, c_g = (part(gates, 1, k, hidden) for k in range(4))
                if peep is not None:
                    i_g = op.add(i_g, op.multiply(p_i, c))
                    f_g = op.add(f_g, op.multiply(p_f, c))
                i = emit(f[0](clipped(i_g)))
                forget = op.subtract(relax.const(1.0, dtype), i) if input_forget \
                    else f[0](clipped(f_g))
                c_new = emit(op.add(op.multiply(forget, c), op.multiply(i, f[1](clipped(c_g)))))
                if peep is not None:
                    o_g = op.add(o_g, op.multiply(p_o, c_new))
                h_new = emit(op.multiply(f[0](clipped(o_g)), f[2](c_new)))
            elif gru:
                zr = op.add(part(x_t, 1, 0, 2 * hidden), op.matmul(h, r_zr))
                z, reset = (emit(v) for v in _split(bb, emit(f[0](clipped(zr))), 2))
                if linear_before_reset:
                    hr = op.matmul(h, r_h)
                    pre = op.multiply(reset, op.add(hr, rb_h) if rb_h is not None else hr)
                else:
                    pre = op.matmul(op.multiply(reset, h), r_h)
                    pre = op.add(pre, rb_h) if rb_h is not None else pre
                cand = emit(f[1](clipped(op.add(part(x_t, 1, 2, hidden), pre))))
                # (1 - z) * cand + z * h, as cand + z * (h - cand)
                h_new = emit(op.add(cand, op.multiply(z, op.subtract(h, cand))))
            else:
                h_new = emit(f[0](clipped(op.add(x_t, op.matmul(h, r_t)))))
            if valid is None:
                outs[t] = h_new
            else:  # past its length a sequence keeps its state and outputs zeros
                v = pick(valid, t)
                outs[t] = emit(op.where(v, h_new, zeros))
                h_new = emit(op.where(v, h_new, h))
                c_new = emit(op.where(v, c_new, c)) if lstm else None
            h, c = h_new, c_new
        ys.append(emit(_stack(outs, 0)))                     # [steps, batch, hidden]
        last_h.append(h)
        last_c.append(c)

    y = emit(_stack(ys, 1))                                   # [steps, dirs, batch, hidden]
    states = [emit(_stack(last_h, 0))] + ([emit(_stack(last_c, 0))] if lstm else [])
    if layout == 1:
        y = emit(op.permute_dims(y, [2, 0, 1, 3]))
        states = [emit(op.permute_dims(s, [1, 0, 2])) for s in states]
    return relax.Tuple([y] + states)


def _stack(exprs: list, axis: int):
    """``relax.op.stack``, written as expand_dims and concat: TVM 0.27's ConvertLayout
    pass fails on ``stack`` ("Index -1 out of bounds"), and the compiler runs it on every
    module to put convolutions in channels-last layout."""
    from tvm import relax

    return relax.op.concat([relax.op.expand_dims(e, axis) for e in exprs], axis=axis)


def _split(bb, expr, parts: int, axis: int = 1) -> list:
    """``expr`` split into ``parts`` equal pieces along ``axis``."""
    from tvm import relax

    if parts == 1:  # Relax's split into one piece is the tensor itself, not a tuple
        return [expr]
    pieces = bb.emit(relax.op.split(expr, parts, axis=axis))
    return [relax.TupleGetItem(pieces, k) for k in range(parts)]
