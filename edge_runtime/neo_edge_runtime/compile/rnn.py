"""ONNX's recurrent operators (LSTM, GRU, RNN) for TVM's Relax ONNX importer.

TVM's ONNX importer (``tvm.relax.frontend.onnx``) has no converter for ``LSTM``, ``GRU``
or ``RNN``. The edge runtime serves static shapes, so the sequence length is known when
the model is imported: each direction of an operator is one matrix product for the input
projections of all steps and one TIR kernel that loops over the steps (:class:`_Cell`),
following the operator specifications
(https://onnx.ai/onnx/operators/onnx__LSTM.html, ``onnx__GRU.html``, ``onnx__RNN.html``):

- directions ``forward``, ``reverse`` and ``bidirectional``; ``layout`` 0 and 1;
- the optional inputs ``B``, ``sequence_lens`` (per-batch lengths, run-time values:
  steps past a sequence's length keep its state and write zeros to ``Y``, as ONNX
  Runtime does), ``initial_h``, ``initial_c`` and LSTM's peepholes ``P``;
- ``activations`` (every function the specification lists, with ``activation_alpha``
  and ``activation_beta`` consumed in order by the functions that take them),
  ``clip``, ``hidden_size``, LSTM's ``input_forget`` and GRU's ``linear_before_reset``;
- the outputs ``Y``, ``Y_h`` and (LSTM) ``Y_c``, any of them unused.

:func:`onnx_converters` adds the converters to TVM's importer for the duration of a
``with`` block (TVM's importer reads its table of converters from the module function
``_get_convert_map`` on every import and offers no registration hook). A converter TVM
itself has is left in place: it comes with the importer it was written for.

Build machine only: the converters build Relax expressions (TVM is imported when a
converter runs, not when this module is imported).
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any, Callable, Iterator, Optional

from ..errors import CompileError

__all__ = ["onnx_converters", "for_gpu", "CONVERTERS"]

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
                   "compiled for a static sequence length") from None


def _activations(spec: type[_Converter], attr: dict, directions: int,
                 fail: _Refusal) -> list[list[tuple[str, float, float]]]:
    """Per direction, the operator's activation functions as (lower-case name, alpha,
    beta), checked against the specification's list."""
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
        functions.append((name.lower(), alpha, beta))
    return [functions[d * per_direction:(d + 1) * per_direction] for d in range(directions)]


def _activation(name: str, alpha: float, beta: float, dtype: str) -> Callable:
    """The activation function ``name`` (the specification's formula) on TE tensors:
    float32 sigmoid and tanh through TVM's vectorizing approximations, as the compiler
    computes them everywhere else (:func:`.generic.fast_math`)."""
    from tvm import te, tirx, topi

    from . import generic

    def c(value: float):
        return tirx.const(value, dtype)

    def pointwise(f: Callable) -> Callable:
        return lambda x: te.compute(x.shape, lambda *i: f(x(*i)), name="activation")

    fast = dtype == "float32"
    table: dict[str, Callable] = {
        "relu": topi.nn.relu,
        "tanh": generic.fast_tanh if fast else topi.tanh,
        "sigmoid": generic.fast_sigmoid if fast else topi.sigmoid,
        "affine": pointwise(lambda v: v * c(alpha) + c(beta)),
        "leakyrelu": pointwise(lambda v: tirx.Select(v > c(0.0), v, v * c(alpha))),
        "thresholdedrelu": pointwise(lambda v: tirx.Select(v > c(alpha), v, c(0.0))),
        "scaledtanh": lambda x: topi.multiply(
            c(alpha), table["tanh"](pointwise(lambda v: v * c(beta))(x))),
        "hardsigmoid": pointwise(
            lambda v: tirx.max(c(0.0), tirx.min(c(1.0), v * c(alpha) + c(beta)))),
        "elu": pointwise(
            lambda v: tirx.Select(v >= c(0.0), v, c(alpha) * (te.exp(v) - c(1.0)))),
        "softsign": pointwise(lambda v: v / (c(1.0) + tirx.abs(v))),
        "softplus": pointwise(lambda v: te.log(c(1.0) + te.exp(v))),
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
    activations = _activations(spec, attr, directions, fail)
    clip = attr.get("clip")
    linear_before_reset = int(attr.get("linear_before_reset", 0))
    input_forget = int(attr.get("input_forget", 0))

    emit = bb.emit

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

    # valid[t, b]: step t is within sequence b's length; None when every sequence is known
    # to be full length.
    valid = None
    if seq_lens is not None:
        lens = _constant(seq_lens, params)
        if lens is None or not (lens.shape == (batch,) and (lens == steps).all()):
            t = op.reshape(op.arange(0, steps, 1, dtype="int64"), [steps, 1])
            valid = emit(op.less(t, op.reshape(op.astype(seq_lens, "int64"), [1, batch])))

    cell = _Cell(spec, steps, batch, hidden, dtype, clip=clip,
                 input_forget=bool(input_forget), linear_before_reset=bool(linear_before_reset))
    ys, last_h, last_c = [], [], []
    for d in range(directions):
        # The input projections of every step at once, with the biases that are added
        # to them unchanged: [steps, batch, gates * hidden].
        xw = op.matmul(x, op.permute_dims(pick(w, d), [1, 0]))
        rb_h = None
        if b is not None:
            b_d = pick(b, d)                                 # [Wb..., Rb...]
            wb, rb = part(b_d, 0, 0, rows), emit(part(b_d, 0, 1, rows))
            if gru:  # Rbh is added inside the reset gate's term
                rb_h = emit(part(rb, 0, 2, hidden))
                rb = op.concat([part(rb, 0, 0, 2 * hidden),
                                op.zeros(relax.ShapeExpr([hidden]), dtype)], axis=0)
            xw = op.add(xw, op.add(wb, rb))
        inputs = {"xw": emit(xw),
                  "rt": emit(op.permute_dims(pick(r, d), [1, 0])),  # [hidden, gates * hidden]
                  "h0": pick(init_h, d) if init_h is not None else None,
                  "c0": pick(init_c, d) if init_c is not None else None,
                  "peephole": pick(peep, d) if peep is not None else None,
                  "rbh": rb_h, "valid": valid}
        y, h, c = cell.emit(bb, {k: v for k, v in inputs.items() if v is not None},
                            activations[d], reverse=direction == "reverse" or d == 1)
        ys.append(y)
        last_h.append(h)
        last_c.append(c)

    y = emit(_stack(ys, 1))                                   # [steps, dirs, batch, hidden]
    states = [emit(_stack(last_h, 0))] + ([emit(_stack(last_c, 0))] if lstm else [])
    if layout == 1:
        y = emit(op.permute_dims(y, [2, 0, 1, 3]))
        states = [emit(op.permute_dims(s, [1, 0, 2])) for s in states]
    return relax.Tuple([y] + states)


class _Cell:
    """One direction of a recurrent operator as one TIR kernel that loops over the time
    steps: per step the recurrent product (the hidden state by R, in vector registers)
    and the gates, the state kept in the kernel's memory. Unrolled into Relax operators,
    each step was three kernels and a dozen VM instructions (the 49 steps of a keyword
    spotter's LSTM: 0.25 ms, ONNX Runtime 0.21); as one kernel the recurrence takes
    0.11 ms.

    The kernel is built in TE, where a tensor cannot read itself: the step reads the
    states of the step before from an input ``prev_state``, which :meth:`kernel` then
    renames into the kernel's ``state`` output, so step ``s`` reads what step ``s - 1``
    wrote. The loop nest that makes this hold (every block computed at its step, in
    order) is built here, with the kernel, and the kernel marked scheduled so no later
    schedule reorders it.
    """

    #: Largest run of output columns a step's product keeps in vector registers:
    #: 4 vectors of AVX-512, 8 of AVX2, 16 of NEON (LLVM splits the wider vectors; the
    #: target is not known when the model is imported).
    TILE = 64

    def __init__(self, spec: type[_Converter], steps: int, batch: int, hidden: int,
                 dtype: str, clip, input_forget: bool, linear_before_reset: bool):
        self.spec, self.steps, self.batch, self.hidden, self.dtype = \
            spec, steps, batch, hidden, dtype
        self.clip = None if clip is None else float(clip)
        self.input_forget, self.linear_before_reset = input_forget, linear_before_reset
        self.lstm, self.gru = spec is LSTM, spec is GRU
        #: States per step: h, and LSTM's c.
        self.states = 2 if self.lstm else 1

    def emit(self, bb, inputs: dict, activations: list[tuple[str, float, float]],
             reverse: bool) -> tuple:
        """(Y [steps, batch, hidden] in time order, last h, last c or None) for one
        direction; ``inputs`` by name (:meth:`kernel`'s placeholders; optional ones
        absent)."""
        from tvm import relax

        op = relax.op
        T, B, H, S = self.steps, self.batch, self.hidden, self.states
        func = self.kernel(set(inputs), activations, reverse)
        gv = bb.add_func(func, f"{self.spec.op.lower()}_recurrence")
        args = [inputs[name] for name in self.ORDER if name in inputs]
        ty = self.dtype
        outs = [relax.TensorType((T, B, S, H), ty), relax.TensorType((T, B, H), ty),
                relax.TensorType((B, H), ty)] + ([relax.TensorType((B, H), ty)] * self.lstm)
        call = bb.emit(op.call_tir(gv, args, outs))
        y, h = bb.emit(relax.TupleGetItem(call, 1)), bb.emit(relax.TupleGetItem(call, 2))
        c = bb.emit(relax.TupleGetItem(call, 3)) if self.lstm else None
        return y, h, c

    #: The kernel's inputs, in its parameters' order.
    ORDER = ("xw", "rt", "h0", "c0", "peephole", "rbh", "valid")

    #: The kernel's attribute holding what :meth:`kernel` was called with (JSON), so
    #: that :func:`for_gpu` can build it again for a GPU.
    RECIPE = "neo_edge.recurrence"

    def kernel(self, given: set, activations: list[tuple[str, float, float]],
               reverse: bool, gpu: bool = False):
        """The scheduled TIR kernel of one direction: for CPUs (vectorized columns), or
        with ``gpu`` for one GPU thread (see :func:`for_gpu`)."""
        from tvm import s_tir, te, tirx, topi

        T, B, H, G, S = self.steps, self.batch, self.hidden, self.spec.gates, self.states
        dtype = self.dtype
        f = [_activation(name, alpha, beta, dtype) for name, alpha, beta in activations]
        shapes = {"xw": (T, B, G * H), "rt": (H, G * H), "h0": (B, H), "c0": (B, H),
                  "peephole": (3 * H,), "rbh": (H,), "valid": (T, B)}
        ph = {name: te.placeholder(shapes[name], "bool" if name == "valid" else dtype, name)
              for name in self.ORDER if name in given}
        xw, rt = ph["xw"], ph["rt"]
        prev_state = te.placeholder((T, B, S, H), dtype, "prev_state")  # state, renamed
        zero = tirx.const(0.0, dtype)

        def time(s):  # the time step processed s-th
            return T - 1 - s if reverse else s

        def carried(init, k: int):  # state k (h, c) before step s
            def at(s, b, j):
                first = init[b, j] if init is not None else zero
                return tirx.if_then_else(s == 0, first,
                                         prev_state[tirx.max(s - 1, 0), b, k, j])
            return at

        def tensor(fn, name):
            return te.compute((T, B, H), fn, name=name)

        def act(fn, x):  # the specification clips the inputs of the activations
            return fn(topi.clip(x, -self.clip, self.clip) if self.clip is not None else x)

        h_prev = tensor(carried(ph.get("h0"), 0), "h_prev")
        k = te.reduce_axis((0, H), name="k")
        products = 2 if self.gru and not self.linear_before_reset else G
        recurrent = te.compute(
            (T, B, products, H),
            lambda s, b, q, n: te.sum(h_prev[s, b, k] * rt[k, q * H + n], axis=k),
            name="recurrent")

        def gate(q: int, name: str):
            return tensor(lambda s, b, j: xw[time(s), b, q * H + j] + recurrent[s, b, q, j],
                          name)

        blocks = ["h_prev", "recurrent"]  # computed at each step, in this order
        c_new = None
        if self.lstm:
            c_prev = tensor(carried(ph.get("c0"), 1), "c_prev")
            i_in, o_in, f_in, g_in = (gate(q, n) for q, n in enumerate("iofc"))
            p = ph.get("peephole")
            if p is not None:
                i_in = tensor(lambda s, b, j: i_in[s, b, j] + p[j] * c_prev[s, b, j], "i_peep")
                f_in = tensor(lambda s, b, j: f_in[s, b, j] + p[2 * H + j] * c_prev[s, b, j],
                              "f_peep")
            i = act(f[0], i_in)
            forget = topi.subtract(tirx.const(1.0, dtype), i) if self.input_forget \
                else act(f[0], f_in)
            g = act(f[1], g_in)
            c_new = tensor(lambda s, b, j: forget[s, b, j] * c_prev[s, b, j]
                           + i[s, b, j] * g[s, b, j], "cell")
            blocks.append("cell")
            if p is not None:
                o_in = tensor(lambda s, b, j: o_in[s, b, j] + p[H + j] * c_new[s, b, j],
                              "o_peep")
            # The cell state is not clipped before its activation, as in ONNX Runtime.
            o, hc = act(f[0], o_in), f[2](c_new)
            h_new = tensor(lambda s, b, j: o[s, b, j] * hc[s, b, j], "h_new")
        elif self.gru:
            z, r = act(f[0], gate(0, "z")), act(f[0], gate(1, "r"))
            rbh = ph.get("rbh")

            def biased(v, s, b, j):
                return v + rbh[j] if rbh is not None else v

            if self.linear_before_reset:
                pre = tensor(lambda s, b, j: r[s, b, j]
                             * biased(recurrent[s, b, 2, j], s, b, j), "reset")
            else:  # (r * h) R_h: a second product, after the first
                rh = tensor(lambda s, b, j: r[s, b, j] * h_prev[s, b, j], "reset_hidden")
                k2 = te.reduce_axis((0, H), name="k2")
                reset_recurrent = tensor(
                    lambda s, b, n: te.sum(rh[s, b, k2] * rt[k2, 2 * H + n], axis=k2),
                    "reset_recurrent")
                pre = tensor(lambda s, b, j: biased(reset_recurrent[s, b, j], s, b, j),
                             "reset")
                blocks += ["reset_hidden", "reset_recurrent"]
            cand = act(f[1], tensor(lambda s, b, j: xw[time(s), b, 2 * H + j] + pre[s, b, j],
                                    "candidate_in"))
            # (1 - z) * cand + z * h, as cand + z * (h - cand)
            h_new = tensor(lambda s, b, j: cand[s, b, j]
                           + z[s, b, j] * (h_prev[s, b, j] - cand[s, b, j]), "h_new")
        else:
            h_new = act(f[0], gate(0, "h_in"))

        valid = ph.get("valid")

        def kept(new, old, s, b, j):  # past its length a sequence keeps its state
            v = new[s, b, j]
            return tirx.Select(valid[time(s), b], v, old[s, b, j]) if valid is not None else v

        if self.lstm:
            state = te.compute(
                (T, B, S, H), lambda s, b, q, j: tirx.if_then_else(
                    q == 0, kept(h_new, h_prev, s, b, j), kept(c_new, c_prev, s, b, j)),
                name="state")
        else:
            state = te.compute((T, B, S, H), lambda s, b, q, j: kept(h_new, h_prev, s, b, j),
                               name="state")

        def output(t, b, j):  # ... and outputs zeros
            v = state[time(t), b, 0, j]
            return tirx.Select(valid[t, b], v, zero) if valid is not None else v

        y = te.compute((T, B, H), output, name="y")

        def final(k: int):  # state k after the last step
            return te.compute((B, H), lambda b, j: state[T - 1, b, k, j], name=f"last{k}")

        last = [final(k) for k in range(S)]
        func = te.create_prim_func([ph[name] for name in self.ORDER if name in ph]
                                   + [prev_state, state, y] + last)

        sch = s_tir.Schedule(func)
        keep = set(blocks) | {"state", "y"} | {f"last{k}" for k in range(S)}
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            if sch.get(block).name_hint not in keep:
                sch.compute_inline(block)
        step = sch.get_loops(sch.get_sblock("state"))[0]
        for name in reversed(blocks):  # consumers first
            sch.compute_at(sch.get_sblock(name), step)
        products = [name for name in ("recurrent", "reset_recurrent") if name in blocks]
        if gpu:
            for name in blocks:  # a thread's own memory: a kernel allocates no global
                sch.set_scope(sch.get_sblock(name), 0, "local")
            for name in ["state", "y"] + [f"last{k}" for k in range(S)]:  # the loop nests
                sch.bind(sch.add_unit_loop(sch.get_loops(sch.get_sblock(name))[0]),
                         "threadIdx.x")
        else:
            tile = max(d for d in range(1, min(H, self.TILE) + 1) if H % d == 0)
            for name in products:
                block = sch.get_sblock(name)
                columns, reduction = sch.get_loops(block)[-2:]
                outer, inner = sch.split(columns, [None, tile])
                sch.reorder(outer, reduction, inner)
                sch.vectorize(inner)
                sch.decompose_reduction(block, reduction)
            for name in keep - set(products):
                outer, inner = sch.split(sch.get_loops(sch.get_sblock(name))[-1], [None, tile])
                sch.vectorize(inner)
        recipe = {"op": self.spec.op, "steps": T, "batch": B, "hidden": H, "dtype": dtype,
                  "clip": self.clip, "input_forget": self.input_forget,
                  "linear_before_reset": self.linear_before_reset, "given": sorted(given),
                  "activations": [list(a) for a in activations], "reverse": reverse}
        func = sch.mod["main"].without_attr("global_symbol").with_attr(
            "tirx.is_scheduled", True).with_attr(self.RECIPE, json.dumps(recipe))
        return _read_own_output(func, "prev_state", "state")


def _read_own_output(func, stand_in: str, output: str):
    """``func`` with its parameter ``stand_in`` removed and what it read read from the
    parameter ``output``. TVM 0.27 offers no buffer substitution in Python; the kernel's
    TVMScript is exact (printed and parsed back, it is structurally equal), so the
    renaming is done there."""
    import re

    import tvm

    text, declarations = re.subn(
        rf"\b{stand_in}: T\.Buffer\(\([^)]*\), \"[^\"]*\"\), ", "", func.script())
    text, reads = re.subn(rf"\b{stand_in}\[", f"{output}[", text)
    if declarations != 1 or not reads or re.search(rf"\b{stand_in}\b", text):
        raise AssertionError(f"{stand_in} not renamed in the kernel:\n{text}")
    return tvm.script.from_source(text)


def for_gpu(mod):
    """``mod`` with the recurrence kernels of :class:`_Cell` built again for a GPU.

    Built for CPUs, a kernel binds no GPU thread: TVM would keep it on the host, where it
    cannot read the GPU's memory. For a GPU each of its loop nests runs in one thread, in
    order: correct, but serial; the steps cannot run in parallel, and spreading a step's
    columns over threads needs a barrier per step, which TVM inserts for shared memory
    only. ONNX Runtime's CUDA provider runs these operators through cuDNN; this path
    makes recurrent models compile and run on NVIDIA targets, not fast there.
    """
    from tvm import tirx

    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or _Cell.RECIPE not in (func.attrs or {}):
            continue
        r = json.loads(str(func.attrs[_Cell.RECIPE]))
        cell = _Cell(CONVERTERS[r["op"]], r["steps"], r["batch"], r["hidden"], r["dtype"],
                     r["clip"], r["input_forget"], r["linear_before_reset"])
        mod[gv] = cell.kernel(set(r["given"]), [tuple(a) for a in r["activations"]],
                              r["reverse"], gpu=True)
    return mod


def _stack(exprs: list, axis: int):
    """``relax.op.stack``, written as expand_dims and concat: TVM 0.27's ConvertLayout
    pass fails on ``stack`` ("Index -1 out of bounds"), and the compiler runs it on every
    module to put convolutions in channels-last layout."""
    from tvm import relax

    return relax.op.concat([relax.op.expand_dims(e, axis) for e in exprs], axis=axis)

