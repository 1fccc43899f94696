"""ONNX graph rewrites that make a model static before TVM's ONNX importer reads it.

The edge runtime serves static shapes, so once the compiler knows every input's shape,
whatever the graph computes from shapes alone is a constant. Exporters compute a lot
from shapes: ``F.interpolate(x, size=(h * 2, w * 2))`` becomes
``Shape -> Gather -> Mul -> Unsqueeze -> Concat -> Resize``, and TVM's importer needs
Resize's sizes (and Reshape's shape, Expand's shape, ...) as constants.
:func:`make_static` folds them, and rewrites what TVM's importer gets wrong or leaves
out into ONNX it converts correctly:

- ``ConvTranspose`` with ``output_shape``: TVM's importer ignores the attribute; it
  becomes the equivalent ``pads`` and ``output_padding`` (the ONNX spec's formula).
- ``Upsample`` (opset 9 and later) with constant scales: TVM's importer reads them from
  the attribute Upsample-7 had; they become that attribute.
- ``LayerNormalization``'s optional outputs ``Mean`` and ``InvStdDev``: TVM's importer
  computes ``Y`` only; when a graph reads them they are computed by ReduceMean, Sub,
  Mul, Add, Sqrt and Reciprocal nodes (in float32 unless ``stash_type`` says otherwise).

Each rewrite leaves the graph's meaning unchanged; a model none applies to is returned
as it came.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

#: Elements a folded tensor may have at most: shape computations are tiny, and weights
#: (which the compiler detaches and may prepack) are left to TVM.
FOLD_LIMIT = 4096
#: Operators whose output is not a function of their inputs.
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike",
                               "RandomUniformLike", "Bernoulli", "Multinomial"})


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _set_attr(node, name: str, value) -> None:
    from onnx import helper

    _del_attr(node, name)
    node.attribute.append(helper.make_attribute(name, value))


def _del_attr(node, name: str) -> None:
    for k, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[k]
            return


def _opset(model) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _shapes(model) -> dict[str, list]:
    """Name to shape (a list of ints and None) of every tensor ONNX's shape inference
    can type; {} if it fails."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # a graph shape inference cannot read: nothing is known
        return {}
    g = inferred.graph
    out = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.WhichOneof("value") == "tensor_type" and tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                            for d in tt.shape.dim]
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def _static(shape: Optional[list]) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _subgraph_inputs(node) -> set[str]:
    """Names the subgraphs of ``node`` (If, Loop, Scan bodies) read, theirs or outer."""
    names: set[str] = set()
    for a in node.attribute:
        for g in [a.g] if a.HasField("g") else list(a.graphs):
            for n in g.node:
                names.update(n.input)
                names |= _subgraph_inputs(n)
            names.update(o.name for o in g.output)
    return names


def _fold(model, shapes: dict[str, list]) -> bool:
    """Replace what ``model``'s graph computes from constants and static shapes alone
    with ``Constant`` nodes; True if anything was folded."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    opset = _opset(model)
    inits = {i.name: i for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    values: dict[str, np.ndarray] = {}
    folded: set[int] = set()

    def value(name: str):
        if name in values:
            return values[name]
        init = inits.get(name)
        if init is not None and int(np.prod(init.dims)) <= FOLD_LIMIT and \
                init.data_location != init.EXTERNAL:
            values[name] = numpy_helper.to_array(init)
            return values[name]
        return None

    for k, node in enumerate(g.node):
        if node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC \
                or any(o in graph_outputs for o in node.output) or _subgraph_inputs(node):
            continue
        out = None
        try:
            if node.op_type == "Shape" and _static(shapes.get(node.input[0])):
                shape = shapes[node.input[0]]
                start, end = _attr(node, "start", 0), _attr(node, "end", len(shape))
                out = [np.array(shape[slice(start, end)], dtype=np.int64)]
            elif node.op_type == "Size" and _static(shapes.get(node.input[0])):
                out = [np.array(int(np.prod(shapes[node.input[0]])), dtype=np.int64)]
            elif node.op_type == "Constant" or (
                    node.input and all(not i or value(i) is not None for i in node.input)):
                feeds = {i: value(i) for i in node.input if i}
                out = ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
        except Exception:  # an operator the reference cannot evaluate stays in the graph
            out = None
        if out is None or len(out) != len(node.output) or not all(
                isinstance(v, np.ndarray) and v.size <= FOLD_LIMIT for v in out):
            continue
        for name, v in zip(node.output, out):
            if name:
                values[name] = v
        folded.add(k)
    if not folded or all(g.node[k].op_type == "Constant" for k in folded):
        return False
    kept = [n for k, n in enumerate(g.node) if k not in folded]
    needed = {i for n in kept for i in n.input} | graph_outputs
    for n in kept:
        needed |= _subgraph_inputs(n)
    made = {o for k in folded for o in g.node[k].output}
    constants = [helper.make_node("Constant", [], [name], name=f"{name}_folded",
                                  value=numpy_helper.from_array(values[name], name))
                 for name in sorted(made & needed)]
    del g.node[:]
    g.node.extend(constants + kept)
    declared = {i.name for i in g.input}
    unused = [i for i in g.initializer if i.name not in needed and i.name not in declared]
    for init in unused:
        g.initializer.remove(init)
    return True


def _conv_transpose_output_shape(model, shapes: dict[str, list]) -> None:
    """Turn ConvTranspose's ``output_shape`` into ``pads`` and ``output_padding``.

    ONNX: ``total_padding[i] = stride[i] * (in[i] - 1) + output_padding[i] +
    ((kernel[i] - 1) * dilation[i] + 1) - output_shape[i]``, split at the start and end
    (the larger half at the end, at the start for ``SAME_UPPER``). An output larger than
    the convolution covers (negative total padding) gets the extra rows at the end, which
    is ``output_padding``: the values ONNX Runtime and ONNX's reference compute.
    """
    from ..errors import CompileError

    for node in model.graph.node:
        if node.op_type != "ConvTranspose" or _attr(node, "output_shape") is None:
            continue
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not _static(x) or not _static(w):
            continue  # left to TVM's importer, which names what it cannot do
        nd = len(x) - 2
        out = list(_attr(node, "output_shape"))[-nd:]
        strides = list(_attr(node, "strides", [1] * nd))
        dilations = list(_attr(node, "dilations", [1] * nd))
        extra = list(_attr(node, "output_padding", [0] * nd))
        kernel = list(_attr(node, "kernel_shape", w[2:]))
        auto_pad = _attr(node, "auto_pad", "NOTSET")
        begin, end = [], []
        for i in range(nd):
            total = strides[i] * (x[i + 2] - 1) + extra[i] + \
                ((kernel[i] - 1) * dilations[i] + 1) - out[i]
            if total < 0:
                extra[i] -= total
                total = 0
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
            if extra[i] >= max(strides[i], dilations[i]):
                raise CompileError(
                    f"ConvTranspose (node {node.name or node.output[0]}): output_shape "
                    f"{out} needs output_padding {extra[i]} on spatial axis {i}, and TVM "
                    f"takes less than the stride ({strides[i]}) or dilation "
                    f"({dilations[i]}) only")
        _del_attr(node, "output_shape")
        _del_attr(node, "auto_pad")
        _set_attr(node, "pads", begin + end)
        _set_attr(node, "output_padding", extra)


def _layer_norm_statistics(model, shapes: dict[str, list]) -> None:
    """Compute LayerNormalization's Mean and InvStdDev outputs, where a graph reads them,
    in nodes of their own (TVM's importer computes Y only)."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    opset = _opset(model)
    nodes = []
    for node in g.node:
        nodes.append(node)
        stats = list(node.output[1:3])
        if node.op_type != "LayerNormalization" or not any(stats):
            continue
        x = node.input[0]
        rank = len(shapes[x]) if shapes.get(x) is not None else None
        if rank is None:
            continue  # left to TVM's importer
        axis = _attr(node, "axis", -1) % rank
        axes = list(range(axis, rank))
        eps = float(_attr(node, "epsilon", 1e-5))
        stash = _attr(node, "stash_type", TensorProto.FLOAT)
        base = (node.name or node.output[0]) + "/stats"

        def name(suffix):
            return f"{base}/{suffix}"

        def reduce_mean(src, dst):
            if opset >= 18:
                axes_name = name(f"axes_{dst.rsplit('/', 1)[-1]}")
                nodes.append(helper.make_node(
                    "Constant", [], [axes_name],
                    value=numpy_helper.from_array(np.array(axes, np.int64), axes_name)))
                return helper.make_node("ReduceMean", [src, axes_name], [dst], keepdims=1)
            return helper.make_node("ReduceMean", [src], [dst], axes=axes, keepdims=1)

        xs = name("x")
        nodes.append(helper.make_node("Cast", [x], [xs], to=stash))
        mean = stats[0] or name("mean")
        nodes.append(reduce_mean(xs, mean))
        nodes.append(helper.make_node("Sub", [xs, mean], [name("centered")]))
        nodes.append(helper.make_node("Mul", [name("centered"), name("centered")],
                                      [name("squared")]))
        nodes.append(reduce_mean(name("squared"), name("variance")))
        if stats[1:] and stats[1]:
            eps_name = name("epsilon")
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(stash))
            nodes.append(helper.make_node(
                "Constant", [], [eps_name],
                value=numpy_helper.from_array(np.array(eps, dtype), eps_name)))
            nodes.append(helper.make_node("Add", [name("variance"), eps_name],
                                          [name("variance_eps")]))
            nodes.append(helper.make_node("Sqrt", [name("variance_eps")], [name("std")]))
            nodes.append(helper.make_node("Reciprocal", [name("std")], [stats[1]]))
        del node.output[1:]
    del g.node[:]
    g.node.extend(nodes)


def _upsample_scales(model) -> None:
    """Give Upsample (opset 9, scales an input) its scales as the attribute TVM's importer
    reads (Upsample-7's), where they are constant."""
    from onnx import numpy_helper

    g = model.graph
    known = {i.name: i for i in g.initializer}
    known.update({n.output[0]: _attr(n, "value") for n in g.node
                  if n.op_type == "Constant" and _attr(n, "value") is not None})
    for node in g.node:
        if node.op_type == "Upsample" and len(node.input) == 2 and node.input[1] in known:
            scales = numpy_helper.to_array(known[node.input[1]]).astype(float).ravel()
            _set_attr(node, "scales", [float(v) for v in scales])
            del node.input[1]


def _refuse_data_dependent_shapes(model) -> None:
    """Raise :class:`~neo_edge_runtime.errors.CompileError` for a NonMaxSuppression
    node: ONNX's ``selected_indices`` is ``[num_selected, 3]``, one row per box kept, a
    number known only at run time, and the edge runtime's outputs have static shapes.
    (TVM's importer would compile it, but with thresholds it cannot read from inputs
    replaced by defaults, and a row count the manifest cannot declare.)"""
    from ..errors import CompileError

    for node in model.graph.node:
        if node.op_type == "NonMaxSuppression":
            raise CompileError(
                f"NonMaxSuppression (node {node.name or node.output[0]}) is not supported: "
                f"its output {node.output[0]!r} has one row per box selected, a number known "
                "only at run time, and the edge runtime's outputs have static shapes; export "
                "the model without it and select the boxes after inference")


def make_static(model, input_shapes: dict[str, list[int]]):
    """``model`` (not modified) with its inputs of shapes ``input_shapes`` and the
    rewrites of this module applied: a new ``ModelProto``.

    Raises :class:`~neo_edge_runtime.errors.CompileError` for what no rewrite can make
    TVM compute right (a ConvTranspose ``output_shape`` TVM's padding cannot reach).
    """
    from onnx import ModelProto

    out = ModelProto()
    out.CopyFrom(model)
    for vi in out.graph.input:
        shape = input_shapes.get(vi.name)
        if shape is None or vi.type.WhichOneof("value") != "tensor_type":
            continue
        dims = vi.type.tensor_type.shape.dim
        del dims[:]
        for d in shape:
            dims.add().dim_value = int(d)
    _refuse_data_dependent_shapes(out)
    shapes = _shapes(out)
    if _fold(out, shapes):
        shapes = _shapes(out)
    _upsample_scales(out)
    _conv_transpose_output_shape(out, shapes)
    _layer_norm_statistics(out, shapes)
    return out
