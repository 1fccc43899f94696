"""ONNX-ML operators (domain ``ai.onnx.ml``) rewritten into standard ONNX, for TVM.

scikit-learn models reach ONNX through skl2onnx, which writes estimators as ONNX-ML
operators (Scaler, LinearClassifier, TreeEnsembleClassifier, ZipMap, ...). TVM's ONNX
importer converts the standard domain only, so :func:`lower_onnx_ml` replaces each
ONNX-ML node, before the import, with standard nodes that compute what ONNX Runtime's
CPU kernels compute: ONNX Runtime is what users check an exported model against, and
where its kernels and the operator's specification part ways, the operator's function
here says so and follows ONNX Runtime.

Operators (specifications: https://onnx.ai/onnx/operators/ , domain ``ai.onnx.ml``):
Scaler, Normalizer, Binarizer, Imputer, ArrayFeatureExtractor, FeatureVectorizer,
OneHotEncoder (integer categories), LabelEncoder (numbers to numbers), LinearClassifier,
LinearRegressor, TreeEnsembleClassifier, TreeEnsembleRegressor (versions 1 and 3),
TreeEnsemble (version 5) and ZipMap. Others (SVMClassifier, SVMRegressor, DictVectorizer,
CategoryMapper, CastMap, ...) raise :class:`~neo_edge_runtime.errors.CompileError`
naming the node.

Trees (and XGBoost's, :mod:`.xgboost_onnx`) are evaluated by :func:`tree_leaves`, all
trees of an ensemble at once, one level per step::

    node = root of every tree                                          [N, T]
    repeat depth times:
        x    = X[n, feature[node]]                                     (GatherElements)
        cond = compare(x, threshold[node])   by the node's mode, NaN as the node says
        node = where(cond, true_child[node], false_child[node])       (leaves loop to themselves)
    scores = aggregate over trees of leaf_weight[node]                  [N, targets]

The edge runtime serves numeric tensors, which decides two things:

- **ZipMap** (a sequence of maps from class label to probability) is dropped: its
  output, under the same name, is the probability tensor ``[N, classes]`` it was made
  from, columns in the order of the classifier's labels: what skl2onnx writes when
  given ``options={'zipmap': False}``.
- **String class labels**: a label output is the class's index (int64) into the
  classifier's labels, and the labels themselves go to the manifest's metadata
  (``labels``), where the edge inference handler's classification postprocessing reads
  them. The compiler records integer labels there too.

What was rewritten this way is recorded by :func:`recording` (the compiler logs it and
writes it to the manifest).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

from ..errors import CompileError

ML_DOMAIN = "ai.onnx.ml"
#: The standard opset the rewritten graph uses at least (a model below it goes through
#: ONNX's version converter first): Softmax works on one axis, ReduceSum takes its axes
#: as an input, GatherElements and LessOrEqual exist.
MIN_OPSET = 13
#: TreeEnsemble-5's integer encodings of its enumerations, in order.
POST_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")
AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")
MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ",
         "BRANCH_MEMBER")
#: Why the ONNX-ML operators not rewritten are refused.
_REFUSED = {
    "DictVectorizer": "its input is a map, and the edge runtime's inputs are tensors",
    "CastMap": "its input is a map, and the edge runtime's inputs are tensors",
    "CategoryMapper": "it maps strings, and the edge runtime serves numeric tensors",
    "SVMClassifier": "support vector machines are not rewritten into standard ONNX "
                     "(export a LinearSVC, or a linear or tree model)",
    "SVMRegressor": "support vector machines are not rewritten into standard ONNX "
                    "(export a LinearSVR, or a linear or tree model)",
}


# ---------------------------------------------------------------------------------------
# What was rewritten: for the manifest and the log


@dataclass
class Report:
    """What :func:`lower_onnx_ml` changed that a user of the compiled model sees:
    ``notes`` (one sentence each) and the classifier's ``labels`` (None if the model
    has no classifier, or several with different labels)."""

    notes: list[str] = field(default_factory=list)
    labels: Optional[list] = None
    _label_sets: list[list] = field(default_factory=list, repr=False)

    def add_labels(self, labels: list) -> None:
        if labels not in self._label_sets:
            self._label_sets.append(labels)
        self.labels = self._label_sets[0] if len(self._label_sets) == 1 else None


_REPORT: contextvars.ContextVar[Optional[Report]] = contextvars.ContextVar(
    "neo_edge_onnx_ml_report", default=None)


@contextlib.contextmanager
def recording() -> Iterator[Report]:
    """Collect, in the :class:`Report` yielded, what every :func:`lower_onnx_ml` call
    made inside the ``with`` block rewrote."""
    report = Report()
    token = _REPORT.set(report)
    try:
        yield report
    finally:
        _REPORT.reset(token)


# ---------------------------------------------------------------------------------------
# Building nodes


def _attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[a.name] = value
    return out


def _tensor_attr(attrs: dict, name: str) -> Optional[np.ndarray]:
    from onnx import numpy_helper

    value = attrs.get(name)
    return None if value is None else numpy_helper.to_array(value)


def _describe(node) -> str:
    return f"{node.op_type} (node {node.name or node.output[0]})"


class Builder:
    """Emits standard nodes and initializers with names unused in the graph."""

    def __init__(self, taken: set[str], opset: int):
        self.taken = taken
        self.opset = opset
        self.nodes: list = []
        self.inits: list = []
        self.prefix = "onnx_ml"

    def fresh(self, hint: str) -> str:
        base = f"{self.prefix}/{hint}"
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def const(self, value, hint: str, dtype=None) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: Optional[str] = None,
           out: Optional[str] = None, **attrs) -> str:
        from onnx import helper

        out = out or self.fresh(hint or op_type[0].lower() + op_type[1:])
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=self.fresh(op_type), **attrs))
        return out

    def cast(self, x: str, to: int, elem: Optional[int] = None, hint: str = "cast") -> str:
        return x if elem == to else self.op("Cast", [x], hint, to=to)

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1,
               hint: Optional[str] = None) -> str:
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.const(np.asarray(axes, np.int64), "axes")],
                           hint, keepdims=keepdims)
        return self.op(op_type, [x], hint, axes=list(axes), keepdims=keepdims)

    def where(self, cond: Optional[str], a: str, b: str, hint: str = "where") -> str:
        """``a`` where ``cond`` (None: everywhere), else ``b``."""
        return a if cond is None else self.op("Where", [cond, a, b], hint)

    def column(self, x: str, k: int, hint: str = "column") -> str:
        """Column ``k`` of ``[N, K]`` ``x``, as ``[N, 1]``."""
        return self.op("Gather", [x, self.const(np.asarray([k], np.int64), "index")], hint,
                       axis=1)

    def rows(self, x: str, hint: str = "rows") -> str:
        """``[1, F]`` from a 1-D ``x`` (ONNX Runtime's ML kernels read one as one row)."""
        return self.op("Reshape", [x, self.const(np.asarray([1, -1], np.int64), "shape")],
                       hint)


def _np_dtype(elem: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem))


# ---------------------------------------------------------------------------------------
# Post transforms, as ONNX Runtime's ml_common.h computes them


def _probit(b: Builder, x: str, dtype) -> str:
    """ONNX Runtime's ``ComputeProbit``: ``sqrt(2) * erfinv(2x - 1)`` with erfinv by
    Winitzki's approximation (a = 0.147), the formula of its ``ErfInv``, not the exact
    inverse (which differs by up to about 2e-3)."""
    def c(v):
        return b.const(np.asarray(v, dtype), "c")

    t = b.op("Sub", [b.op("Mul", [x, c(2.0)]), c(1.0)])
    sign = b.op("Where", [b.op("Less", [t, c(0.0)]), c(-1.0), c(1.0)])
    ln = b.op("Log", [b.op("Mul", [b.op("Sub", [c(1.0), t]), b.op("Add", [c(1.0), t])])])
    v = b.op("Add", [c(2.0 / (np.float32(3.14159) * np.float32(0.147))),
                     b.op("Mul", [c(0.5), ln])])
    v2 = b.op("Mul", [c(1.0 / np.float32(0.147)), ln])
    v3 = b.op("Sub", [b.op("Sqrt", [b.op("Sub", [b.op("Mul", [v, v]), v2])]), v])
    return b.op("Mul", [b.op("Mul", [c(math.sqrt(2.0)), sign]), b.op("Sqrt", [v3])])


def _softmax_zero(b: Builder, x: str, dtype) -> str:
    """``SOFTMAX_ZERO``: a softmax in which scores of magnitude 1e-7 or less count as
    absent (ONNX Runtime's ``ComputeSoftmaxZero``: they become ``x * exp(-max)``, about
    0, and stay out of the sum)."""
    eps = b.const(np.asarray(1e-7, dtype), "eps")
    nonzero = b.op("Greater", [b.op("Abs", [x]), eps])
    top = b.reduce("ReduceMax", x, [-1])
    shifted = b.op("Exp", [b.op("Sub", [x, top])])
    scaled = b.op("Mul", [x, b.op("Exp", [b.op("Neg", [top])])])
    e = b.op("Where", [nonzero, shifted, scaled])
    total = b.reduce("ReduceSum", b.op("Where", [nonzero, shifted,
                                                 b.const(np.asarray(0, dtype), "zero")]), [-1])
    return b.op("Div", [e, total])


def _post_transform(b: Builder, x: str, post: str, dtype) -> str:
    """``post_transform`` on scores ``[N, K]``, K of 2 or more: each row at once."""
    if post == "NONE":
        return x
    if post == "LOGISTIC":
        return b.op("Sigmoid", [x])
    if post == "SOFTMAX":
        return b.op("Softmax", [x], axis=-1)
    if post == "SOFTMAX_ZERO":
        return _softmax_zero(b, x, dtype)
    if post == "PROBIT":
        return _probit(b, x, dtype)
    raise CompileError(f"post_transform {post!r} is not one of {', '.join(POST_TRANSFORMS)}")


# ---------------------------------------------------------------------------------------
# Trees


@dataclass
class Forest:
    """Decision trees as flat arrays, the nodes of every tree side by side.

    Node ``i``: ``mode[i]`` is ``LEAF`` or a ``BRANCH_*`` comparison (LEQ, LT, GTE, GT,
    EQ, NEQ) of feature ``feature[i]`` with ``threshold[i]``; a true comparison goes to
    node ``true[i]``, a false one to ``false[i]``; a NaN feature goes to ``true[i]``
    where ``missing_true[i]``, else where the comparison with NaN is true (NEQ only).
    ``weights[i]`` is a leaf's ``(target, weight)`` list. ``roots`` is each tree's root.
    """

    feature: list[int] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    mode: list[str] = field(default_factory=list)
    true: list[int] = field(default_factory=list)
    false: list[int] = field(default_factory=list)
    missing_true: list[bool] = field(default_factory=list)
    weights: list[list[tuple[int, float]]] = field(default_factory=list)
    roots: list[int] = field(default_factory=list)

    def add(self, mode: str, feature: int = 0, threshold: float = 0.0, true: int = -1,
            false: int = -1, missing_true: bool = False,
            weights: Optional[list] = None) -> int:
        """Append a node; returns its index (a leaf's children are itself)."""
        i = len(self.mode)
        leaf = mode == "LEAF"
        self.mode.append(mode)
        self.feature.append(0 if leaf else int(feature))
        self.threshold.append(0.0 if leaf else float(threshold))
        self.true.append(i if leaf else int(true))
        self.false.append(i if leaf else int(false))
        self.missing_true.append(bool(missing_true) and not leaf)
        self.weights.append(list(weights or []))
        return i

    def depth(self) -> int:
        """Comparisons on the longest path from a root to a leaf."""
        n = len(self.mode)
        for i in range(n):
            for child in (self.true[i], self.false[i]):
                if not 0 <= child < n:
                    raise CompileError(f"tree node {i} has a child {child} outside the "
                                       f"{n} nodes")
        level, depth = set(self.roots), 0
        while True:
            branches = {i for i in level if self.mode[i] != "LEAF"}
            if not branches:
                return depth
            depth += 1
            if depth > n:
                raise CompileError("the trees have a cycle: a node is its own descendant")
            level = {c for i in branches for c in (self.true[i], self.false[i])}


_BASE = {"BRANCH_LT": ("Less", False), "BRANCH_GTE": ("Less", True),
         "BRANCH_LEQ": ("LessOrEqual", False), "BRANCH_GT": ("LessOrEqual", True),
         "BRANCH_EQ": ("Equal", False), "BRANCH_NEQ": ("Equal", True)}


def tree_leaves(b: Builder, x: str, forest: Forest, dtype) -> str:
    """The leaf every row of ``x`` (``[N, F]`` of ``dtype``) reaches in every tree of
    ``forest``: a ``[N, trees]`` int64 tensor of node indices.

    Each mode is a comparison of three (Less, LessOrEqual, Equal), negated for GTE, GT
    and NEQ, which is exact for every number; NaN then goes where the node sends it.
    """
    dtype = np.dtype(dtype)
    n_trees = len(forest.roots)
    depth = forest.depth()
    branch = [m for m in forest.mode if m != "LEAF"]
    for m in set(branch):
        if m not in _BASE:
            raise CompileError(f"tree node mode {m!r} is not one of {', '.join(_BASE)}, LEAF")
    kinds = sorted({_BASE[m][0] for m in branch})
    negate = [m != "LEAF" and _BASE[m][1] for m in forest.mode]
    nan_true = [forest.missing_true[i] or forest.mode[i] == "BRANCH_NEQ"
                for i in range(len(forest.mode))]
    # Without negation NaN compares false, which is the false branch it takes anyway.
    nan_matters = dtype.kind == "f" and (any(negate) or any(nan_true))

    def table(values, hint, kind):
        return b.const(np.asarray(values, dtype=kind), hint)

    feature = table(forest.feature, "feature", np.int64)
    threshold = table(forest.threshold, "threshold", dtype)
    true = table(forest.true, "true_child", np.int64)
    false = table(forest.false, "false_child", np.int64)
    kind_of = {k: table([m != "LEAF" and _BASE[m][0] == k for m in forest.mode],
                        f"is_{k}", bool) for k in kinds[1:]}
    negated = table(negate, "negate", bool) if any(negate) else None
    nan_goes_true = table(nan_true, "nan_true", bool) if nan_matters else None

    batch = b.op("Gather", [b.op("Shape", [x]), b.const(np.asarray([0], np.int64), "zero")],
                 "batch", axis=0)
    shape = b.op("Concat", [batch, b.const(np.asarray([n_trees], np.int64), "trees")],
                 "roots_shape", axis=0)
    node = b.op("Expand", [b.const(np.asarray([forest.roots], np.int64), "roots"), shape],
                "node")
    for _ in range(depth):
        xv = b.op("GatherElements", [x, b.op("Gather", [feature, node], "feature")], "x",
                  axis=1)
        thr = b.op("Gather", [threshold, node], "threshold")
        cond = b.op(kinds[0], [xv, thr], "cond")
        # Boolean selections as And/Or (ONNX Runtime has no Where for bool).
        for k in kinds[1:]:
            is_k = b.op("Gather", [kind_of[k], node])
            cond = b.op("Or", [b.op("And", [is_k, b.op(k, [xv, thr])]),
                               b.op("And", [b.op("Not", [is_k]), cond])], "cond")
        if negated is not None:
            cond = b.op("Xor", [cond, b.op("Gather", [negated, node])], "cond")
        if nan_goes_true is not None:
            nan = b.op("IsNaN", [xv])
            cond = b.op("Or", [b.op("And", [nan, b.op("Gather", [nan_goes_true, node])]),
                               b.op("And", [b.op("Not", [nan]), cond])], "cond")
        node = b.op("Where", [cond, b.op("Gather", [true, node], "true"),
                              b.op("Gather", [false, node], "false")], "node")
    return node


def tree_scores(b: Builder, x: str, forest: Forest, n_targets: int, aggregate: str,
                dtype, first_weight_only: bool = False) -> tuple[str, Optional[str]]:
    """(scores ``[N, n_targets]`` of ``dtype``, hit ``[N, n_targets]`` bool or None).

    ``scores[n, k]`` aggregates (SUM, AVERAGE: the sum; MIN, MAX) the weights for
    target k of the leaves row n reaches; ``hit[n, k]`` says whether any did (None when
    every leaf has a weight for every target; a score no leaf gave is 0 for SUM and
    AVERAGE, +-inf for MIN and MAX). ``first_weight_only``: a leaf counts only its first
    weight (ONNX Runtime's single-target kernels).
    """
    if aggregate not in AGGREGATES:
        raise CompileError(f"aggregate_function {aggregate!r} is not one of "
                           f"{', '.join(AGGREGATES)}")
    dtype = np.dtype(dtype)
    n = len(forest.mode)
    fill = {"MIN": np.inf, "MAX": -np.inf}.get(aggregate, 0.0)
    values = np.full((n, n_targets), fill, dtype=np.float64)
    hit = np.zeros((n, n_targets), dtype=bool)
    for i, ws in enumerate(forest.weights):
        if forest.mode[i] != "LEAF":
            continue
        for target, w in (ws[:1] if first_weight_only else ws):
            if not 0 <= target < n_targets:
                raise CompileError(f"a leaf weight is for target {target}; the ensemble has "
                                   f"{n_targets}")
            if aggregate == "MIN":
                values[i, target] = min(values[i, target], w)
            elif aggregate == "MAX":
                values[i, target] = max(values[i, target], w)
            else:
                values[i, target] += dtype.type(w)
            hit[i, target] = True
    leaves = tree_leaves(b, x, forest, dtype)
    table = b.const(values.astype(dtype), "leaf_weights")
    gathered = b.op("Gather", [table, leaves], "weights")  # [N, T, K]
    reduce = {"MIN": "ReduceMin", "MAX": "ReduceMax"}.get(aggregate, "ReduceSum")
    scores = b.reduce(reduce, gathered, [1], keepdims=0, hint="scores")
    leaf_rows = [i for i, m in enumerate(forest.mode) if m == "LEAF"]
    if hit[leaf_rows].all():
        return scores, None
    hits = b.op("Gather", [b.const(hit.astype(np.float32), "leaf_hits"), leaves], "hits")
    any_hit = b.op("Cast", [b.reduce("ReduceMax", hits, [1], keepdims=0)], "hit",
                   to=_elem(bool))
    return scores, any_hit


def _elem(dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _forest_v1(node, attrs: dict, prefix: str, threshold_dtype) -> tuple[Forest, int]:
    """The forest of a TreeEnsembleClassifier or TreeEnsembleRegressor (versions 1 and
    3) and its number of trees. Trees are found as ONNX Runtime finds them: a root is
    every node whose tree id differs from the node listed before it."""
    tree_ids = list(attrs.get("nodes_treeids", []))
    node_ids = list(attrs.get("nodes_nodeids", []))
    modes = list(attrs.get("nodes_modes", []))
    values = _tensor_attr(attrs, "nodes_values_as_tensor")
    values = list(attrs.get("nodes_values", [])) if values is None else values.tolist()
    n = len(tree_ids)
    for key in ("nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_truenodeids",
                "nodes_falsenodeids"):
        if len(attrs.get(key, [])) != n:
            raise CompileError(f"{_describe(node)}: {key} has {len(attrs.get(key, []))} "
                               f"entries; nodes_treeids has {n}")
    if len(values) != n:
        raise CompileError(f"{_describe(node)}: nodes_values has {len(values)} entries; "
                           f"nodes_treeids has {n}")
    missing = list(attrs.get("nodes_missing_value_tracks_true", []))
    index = {}
    for i, key in enumerate(zip(tree_ids, node_ids)):
        if key in index:
            raise CompileError(f"{_describe(node)}: node {key[1]} of tree {key[0]} is listed "
                               "twice")
        index[key] = i
    forest = Forest()
    weights: list[list] = [[] for _ in range(n)]
    ids = _tensor_attr(attrs, f"{prefix}_weights_as_tensor")
    w = list(attrs.get(f"{prefix}_weights", [])) if ids is None else ids.tolist()
    t_ids = list(attrs.get(f"{prefix}_ids", []))
    t_nodes = list(attrs.get(f"{prefix}_nodeids", []))
    t_trees = list(attrs.get(f"{prefix}_treeids", []))
    if not len(w) == len(t_ids) == len(t_nodes) == len(t_trees):
        raise CompileError(f"{_describe(node)}: {prefix}_ids, {prefix}_nodeids, "
                           f"{prefix}_treeids and {prefix}_weights differ in length")
    for target, tree, nid, weight in zip(t_ids, t_trees, t_nodes, w):
        i = index.get((tree, nid))
        if i is None:
            raise CompileError(f"{_describe(node)}: a weight is for node {nid} of tree {tree}, "
                               "which is not listed")
        weights[i].append((int(target), float(weight)))
    for i in range(n):
        if modes[i] == "LEAF":
            if not weights[i]:
                raise CompileError(f"{_describe(node)}: leaf {node_ids[i]} of tree "
                                   f"{tree_ids[i]} has no weight")
            forest.add("LEAF", weights=weights[i])
            continue
        if modes[i] not in _BASE:
            raise CompileError(f"{_describe(node)}: node mode {modes[i]!r} is not one of "
                               f"{', '.join(_BASE)}, LEAF")
        children = []
        for key in ("nodes_truenodeids", "nodes_falsenodeids"):
            child = index.get((tree_ids[i], attrs[key][i]))
            if child is None:
                raise CompileError(f"{_describe(node)}: node {node_ids[i]} of tree "
                                   f"{tree_ids[i]} points to node {attrs[key][i]}, which "
                                   "is not listed")
            children.append(child)
        forest.add(modes[i], attrs["nodes_featureids"][i],
                   np.asarray(values[i]).astype(threshold_dtype), children[0], children[1],
                   i < len(missing) and missing[i] == 1)
    forest.roots = [i for i in range(n) if i == 0 or tree_ids[i] != tree_ids[i - 1]]
    return forest, len(forest.roots)


def _forest_v5(node, attrs: dict, threshold_dtype) -> Forest:
    """The forest of a TreeEnsemble (version 5): interior nodes first, then the leaves;
    a BRANCH_MEMBER node becomes a chain of BRANCH_EQ nodes, one per member."""
    modes = _tensor_attr(attrs, "nodes_modes")
    splits = _tensor_attr(attrs, "nodes_splits")
    leaf_weights = _tensor_attr(attrs, "leaf_weights")
    if modes is None or splits is None or leaf_weights is None:
        raise CompileError(f"{_describe(node)}: nodes_modes, nodes_splits and leaf_weights "
                           "are required")
    modes, splits = modes.astype(int).tolist(), splits.tolist()
    n = len(modes)
    true_ids, false_ids = attrs["nodes_truenodeids"], attrs["nodes_falsenodeids"]
    true_leaf = attrs.get("nodes_trueleafs", [0] * n)
    false_leaf = attrs.get("nodes_falseleafs", [0] * n)
    missing = attrs.get("nodes_missing_value_tracks_true", [0] * n)
    targets = attrs.get("leaf_targetids", [])
    members = _tensor_attr(attrs, "membership_values")
    sets: list[list[float]] = [[]]
    for v in ([] if members is None else members.tolist()):
        if math.isnan(v):
            sets.append([])
        else:
            sets[-1].append(v)
    for mode in modes:
        if not 0 <= mode < len(MODES):
            raise CompileError(f"{_describe(node)}: node mode {mode} is not one of 0 to "
                               f"{len(MODES) - 1}")
    while len(sets) > 1 and not sets[-1]:  # a NaN after the last set
        sets.pop()
    forest = Forest()
    # Interior node i at index i, leaf j at n + j, the rest of member chains after them.
    extra = n + len(leaf_weights)
    pending: dict[int, tuple] = {}
    member_k = 0
    for i, mode in enumerate(modes):
        t = n + true_ids[i] if true_leaf[i] else true_ids[i]
        f = n + false_ids[i] if false_leaf[i] else false_ids[i]
        feature = attrs["nodes_featureids"][i]
        if MODES[mode] != "BRANCH_MEMBER":
            pending[i] = (MODES[mode], feature, splits[i], t, f, bool(missing[i]))
            continue
        values = sets[member_k] if member_k < len(sets) else []
        member_k += 1
        if not values:
            raise CompileError(f"{_describe(node)}: BRANCH_MEMBER node {i} has no "
                               "membership_values")
        chain = [i] + list(range(extra, extra + len(values) - 1))
        extra += len(values) - 1
        for k, idx in enumerate(chain):
            nxt = chain[k + 1] if k + 1 < len(chain) else f
            pending[idx] = ("BRANCH_EQ", feature, values[k], t, nxt,
                            bool(missing[i]) and k == 0)
    for j, (target, weight) in enumerate(zip(targets, leaf_weights.tolist())):
        pending[n + j] = ("LEAF", int(target), float(weight))
    for idx in range(extra):
        entry = pending.get(idx)
        if entry is None:
            raise CompileError(f"{_describe(node)}: leaf_targetids and leaf_weights differ "
                               "in length")
        if entry[0] == "LEAF":
            forest.add("LEAF", weights=[(entry[1], entry[2])])
        else:
            mode, feat, thr, t, f, miss = entry
            forest.add(mode, feat, np.asarray(thr).astype(threshold_dtype), t, f, miss)
    forest.roots = list(attrs.get("tree_roots", []))
    return forest


# ---------------------------------------------------------------------------------------
# The operators


class _Lowering:
    """Rewrites the ONNX-ML nodes of one graph."""

    def __init__(self, model, report: Report):
        import onnx

        self.model = model
        self.report = report
        g = model.graph
        taken = {n.name for n in g.node} | {o for n in g.node for o in n.output} | \
            {i for n in g.node for i in n.input} | {i.name for i in g.initializer} | \
            {v.name for v in list(g.input) + list(g.output) + list(g.value_info)}
        opset = next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))
        self.b = Builder(taken, opset)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # a graph ONNX cannot type: every tensor is taken as float
            inferred = model
        self.types: dict[str, tuple[int, Optional[int]]] = {}
        for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + \
                list(inferred.graph.output):
            if vi.type.WhichOneof("value") == "tensor_type":
                tt = vi.type.tensor_type
                self.types[vi.name] = (tt.elem_type,
                                       len(tt.shape.dim) if tt.HasField("shape") else None)
        for init in g.initializer:
            self.types[init.name] = (init.data_type, len(init.dims))
        self.shapes = {}
        for vi in list(inferred.graph.input) + list(inferred.graph.value_info):
            tt = vi.type.tensor_type
            if vi.type.WhichOneof("value") == "tensor_type" and tt.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                        for d in tt.shape.dim]
        #: Names of int64 tensors that stand for string labels: index into these labels.
        self.string_labels: dict[str, list[str]] = {}
        #: ZipMap outputs now probability tensors, and their number of classes.
        self.zipmaps: dict[str, int] = {}

    # helpers -----------------------------------------------------------------------

    def elem(self, name: str) -> int:
        from onnx import TensorProto

        elem = self.types.get(name, (TensorProto.FLOAT, None))[0]
        return elem or TensorProto.FLOAT

    def rank(self, name: str) -> Optional[int]:
        return self.types.get(name, (None, None))[1]

    def float_input(self, node, x: str, allow_double: bool = False) -> tuple[str, int]:
        """``x`` as the float tensor ONNX Runtime's ML kernels compute on (double kept
        where ``allow_double``), and its element type."""
        from onnx import TensorProto

        elem = self.elem(x)
        if elem == TensorProto.STRING:
            raise CompileError(f"{_describe(node)}: its input {x!r} is a tensor of strings; "
                               "the edge runtime serves numeric tensors")
        to = TensorProto.DOUBLE if allow_double and elem == TensorProto.DOUBLE \
            else TensorProto.FLOAT
        return self.b.cast(x, to, elem), to

    def matrix(self, node, x: str, allow_double: bool = False) -> tuple[str, int]:
        """``x`` as ``[N, F]`` float (a 1-D input is one row, as in ONNX Runtime)."""
        xf, elem = self.float_input(node, x, allow_double)
        rank = self.rank(x)
        if rank == 1:
            xf = self.b.rows(xf)
        elif rank is not None and rank != 2:
            raise CompileError(f"{_describe(node)}: its input {x!r} has {rank} dimensions; "
                               "it takes [N, features] or [features]")
        return xf, elem

    @staticmethod
    def labels(attrs: dict, ints_key: str, strings_key: str) -> tuple[list, bool]:
        """(class labels, whether they are strings)."""
        strings = list(attrs.get(strings_key, []))
        if strings:
            return strings, True
        return [int(v) for v in attrs.get(ints_key, [])], False

    def label_output(self, node, out: str, index: str, labels: list, strings: bool,
                     literal: bool = False) -> None:
        """Write the label output ``out`` from ``index`` (int64, an index into
        ``labels``; ``literal``: already the label, as ONNX Runtime's binary kernels
        give 0 or 1)."""
        self.report.add_labels(list(labels))
        if not out:
            return
        if strings:
            self.b.op("Identity", [index], out=out)
            self.string_labels[out] = list(labels)
        elif literal:
            self.b.op("Identity", [index], out=out)
        else:
            self.b.op("Gather", [self.b.const(np.asarray(labels, np.int64), "labels"), index],
                      out=out, axis=0)

    # operators ----------------------------------------------------------------------

    def Scaler(self, node, a):
        """Scaler: ``(X - offset) * scale``, per feature (or one of each for all),
        computed in float (https://onnx.ai/onnx/operators/onnx_aionnxml_Scaler.html)."""
        x, _ = self.float_input(node, node.input[0])
        offset = np.asarray(a.get("offset", [0.0]), np.float32)
        scale = np.asarray(a.get("scale", [1.0]), np.float32)
        centered = self.b.op("Sub", [x, self.b.const(offset, "offset")])
        self.b.op("Mul", [centered, self.b.const(scale, "scale")], out=node.output[0])

    def Normalizer(self, node, a):
        """Normalizer (https://onnx.ai/onnx/operators/onnx_aionnxml_Normalizer.html),
        along axis 1 (axis 0 of a 1-D input), in float. As ONNX Runtime: L1 divides by
        the sum of absolute values, L2 by the root of the sum of squares keeping each
        value's sign (the spec's formulas drop both), MAX by the maximum; a row whose
        divisor is 0 is copied."""
        x, _ = self.float_input(node, node.input[0])
        b = self.b
        norm = a.get("norm", "MAX")
        axis = 0 if self.rank(node.input[0]) == 1 else 1
        zero, one = b.const(np.float32(0), "zero"), b.const(np.float32(1), "one")
        if norm == "MAX":
            d = b.reduce("ReduceMax", x, [axis])
        elif norm == "L1":
            d = b.reduce("ReduceSum", b.op("Abs", [x]), [axis])
        elif norm == "L2":
            d = b.op("Sqrt", [b.reduce("ReduceSum", b.op("Mul", [x, x]), [axis])])
        else:
            raise CompileError(f"{_describe(node)}: norm {norm!r} is not one of MAX, L1, L2")
        d = b.op("Where", [b.op("Equal", [d, zero]), one, d])
        b.op("Div", [x, d], out=node.output[0])

    def Binarizer(self, node, a):
        """Binarizer: 1 where ``X > threshold``, else 0, in X's type
        (https://onnx.ai/onnx/operators/onnx_aionnxml_Binarizer.html)."""
        x = node.input[0]
        dtype = _np_dtype(self.elem(x))
        b = self.b
        above = b.op("Greater", [x, b.const(np.asarray(a.get("threshold", 0.0), dtype), "thr")])
        b.op("Where", [above, b.const(np.asarray(1, dtype), "one"),
                       b.const(np.asarray(0, dtype), "zero")], out=node.output[0])

    def Imputer(self, node, a):
        """Imputer: ``replaced_value_*`` (NaN: every NaN) becomes ``imputed_value_*``
        of its feature (https://onnx.ai/onnx/operators/onnx_aionnxml_Imputer.html)."""
        x = node.input[0]
        dtype = _np_dtype(self.elem(x))
        b = self.b
        if dtype.kind == "f":
            imputed = np.asarray(a.get("imputed_value_floats", []), dtype)
            replaced = float(a.get("replaced_value_float", 0.0))
            hit = b.op("IsNaN", [x]) if math.isnan(replaced) else \
                b.op("Equal", [x, b.const(np.asarray(replaced, dtype), "replaced")])
        else:
            imputed = np.asarray(a.get("imputed_value_int64s", []), dtype)
            hit = b.op("Equal", [x, b.const(np.asarray(a.get("replaced_value_int64", 0),
                                                       dtype), "replaced")])
        if imputed.size == 0:
            raise CompileError(f"{_describe(node)}: it has no imputed values")
        b.op("Where", [hit, b.const(imputed, "imputed"), x], out=node.output[0])

    def ArrayFeatureExtractor(self, node, a):
        """ArrayFeatureExtractor: the elements of the last axis at the given indices
        (https://onnx.ai/onnx/operators/onnx_aionnxml_ArrayFeatureExtractor.html); a 1-D
        input gives one row ``[1, k]``, as in ONNX Runtime."""
        b = self.b
        x, idx = node.input[0], node.input[1]
        if self.elem(x) == _elem(np.str_):
            raise CompileError(f"{_describe(node)}: its input {x!r} is a tensor of strings; "
                               "the edge runtime serves numeric tensors")
        flat = b.op("Reshape", [idx, b.const(np.asarray([-1], np.int64), "flat")])
        if self.rank(x) == 1:
            b.op("Reshape", [b.op("Gather", [x, flat], axis=0),
                             b.const(np.asarray([1, -1], np.int64), "row")], out=node.output[0])
        else:
            b.op("Gather", [x, flat], out=node.output[0], axis=-1)

    def FeatureVectorizer(self, node, a):
        """FeatureVectorizer: the inputs, as float, side by side, each cut or padded
        with zeros to its ``inputdimensions``
        (https://onnx.ai/onnx/operators/onnx_aionnxml_FeatureVectorizer.html)."""
        b = self.b
        dims = list(a.get("inputdimensions", []))
        if len(dims) != len(node.input):
            raise CompileError(f"{_describe(node)}: inputdimensions has {len(dims)} entries "
                               f"for {len(node.input)} inputs")
        parts = []
        for x, d in zip(node.input, dims):
            xf, _ = self.float_input(node, x)
            shape = self.shapes.get(x)
            if self.rank(x) == 1:
                xf = b.rows(xf)
                shape = [1] + (shape or [None])
            width = shape[-1] if shape else None
            if width is None:
                raise CompileError(f"{_describe(node)}: the width of input {x!r} is unknown")
            if width > d:
                xf = b.op("Slice", [xf, b.const(np.asarray([0], np.int64), "start"),
                                    b.const(np.asarray([d], np.int64), "end"),
                                    b.const(np.asarray([1], np.int64), "axis")])
            elif width < d:
                xf = b.op("Pad", [xf, b.const(np.asarray([0, 0, 0, d - width], np.int64),
                                              "pads")])
            parts.append(xf)
        b.op("Concat", parts, out=node.output[0], axis=1)

    def OneHotEncoder(self, node, a):
        """OneHotEncoder with ``cats_int64s``: one more axis, 1.0 at the input's category
        (https://onnx.ai/onnx/operators/onnx_aionnxml_OneHotEncoder.html); float inputs
        are truncated to integers first, as in ONNX Runtime. A value in no category
        gives all zeros, also with ``zeros=0``, where ONNX Runtime raises an error (a
        compiled model cannot)."""
        b = self.b
        cats = list(a.get("cats_int64s", []))
        if not cats:
            raise CompileError(f"{_describe(node)}: only integer categories (cats_int64s) "
                               "compile: string categories need string inputs, and the edge "
                               "runtime serves numeric tensors")
        if a.get("zeros", 1) == 0:
            self.report.notes.append(
                f"{_describe(node)}: an unknown category gives all zeros (ONNX Runtime "
                "raises an error)")
        x = b.cast(node.input[0], _elem(np.int64), self.elem(node.input[0]))
        expanded = b.op("Unsqueeze", [x, b.const(np.asarray([-1], np.int64), "axes")])
        hit = b.op("Equal", [expanded, b.const(np.asarray(cats, np.int64), "cats")])
        b.op("Cast", [hit], out=node.output[0], to=_elem(np.float32))

    def LabelEncoder(self, node, a):
        """LabelEncoder from numbers to numbers: each key becomes its value, anything
        else the default (https://onnx.ai/onnx/operators/onnx_aionnxml_LabelEncoder.html);
        a NaN key matches NaN. Strings (keys or values) are refused: the edge runtime
        serves numeric tensors."""
        b = self.b
        keys = _tensor_attr(a, "keys_tensor")
        values = _tensor_attr(a, "values_tensor")
        default = _tensor_attr(a, "default_tensor")
        if keys is None:
            for k in ("keys_int64s", "keys_floats"):
                if k in a:
                    keys = np.asarray(a[k], np.int64 if k.endswith("int64s") else np.float32)
        if values is None:
            for k in ("values_int64s", "values_floats"):
                if k in a:
                    values = np.asarray(a[k], np.int64 if k.endswith("int64s") else np.float32)
        if keys is None or values is None or keys.dtype.kind in "OSU" or \
                values.dtype.kind in "OSU" or "keys_strings" in a or "values_strings" in a:
            raise CompileError(f"{_describe(node)}: only numeric keys and values compile; "
                               "the edge runtime serves numeric tensors")
        if default is None:
            default = np.asarray(a.get("default_int64", -1) if values.dtype.kind == "i"
                                 else a.get("default_float", -0.0), values.dtype)
        x = node.input[0]
        xk = b.cast(x, _elem(keys.dtype), self.elem(x))
        expanded = b.op("Unsqueeze", [xk, b.const(np.asarray([-1], np.int64), "axes")])
        kc = b.const(keys.ravel(), "keys")
        eq = b.op("Equal", [expanded, kc])
        if keys.dtype.kind == "f" and np.isnan(keys).any():
            both = b.op("And", [b.op("IsNaN", [expanded]), b.op("IsNaN", [kc])])
            eq = b.op("Or", [eq, both])
        eqi = b.op("Cast", [eq], to=_elem(np.int32))
        found = b.op("Cast", [b.reduce("ReduceMax", eqi, [-1], keepdims=0)], to=_elem(bool))
        which = b.op("ArgMax", [eqi], axis=-1, keepdims=0)
        got = b.op("Gather", [b.const(values.ravel(), "values"), which], axis=0)
        b.op("Where", [found, got, b.const(default.ravel()[:1].reshape(()).astype(values.dtype),
                                             "default")], out=node.output[0])

    def LinearRegressor(self, node, a):
        """LinearRegressor: ``X @ coefficients.T + intercepts``
        (https://onnx.ai/onnx/operators/onnx_aionnxml_LinearRegressor.html), in float.
        As ONNX Runtime: intercepts count only when there is one per target, and with
        one target the only post_transform applied is PROBIT."""
        b = self.b
        x, _ = self.matrix(node, node.input[0])
        targets = int(a.get("targets", 1))
        coef = np.asarray(a.get("coefficients", []), np.float32)
        if targets < 1 or coef.size % targets:
            raise CompileError(f"{_describe(node)}: {coef.size} coefficients do not divide "
                               f"into {targets} targets")
        y = b.op("MatMul", [x, b.const(coef.reshape(targets, -1).T.copy(), "coefficients")])
        intercepts = list(a.get("intercepts", []))
        if len(intercepts) == targets:
            y = b.op("Add", [y, b.const(np.asarray(intercepts, np.float32), "intercepts")])
        post = a.get("post_transform", "NONE")
        if targets == 1:
            y = _probit(b, y, np.float32) if post == "PROBIT" else y
        else:
            y = _post_transform(b, y, post, np.float32)
        b.op("Identity", [y], out=node.output[0])

    def LinearClassifier(self, node, a):
        """LinearClassifier: scores ``X @ coefficients.T + intercepts``, the label of
        the highest score (https://onnx.ai/onnx/operators/onnx_aionnxml_LinearClassifier.html),
        in float. As ONNX Runtime, with one row of coefficients: the label is the second
        class where the score is positive (of two labels; else 1 or 0), the scores with
        two labels are ``[1 - s, s]`` (s before any transform but PROBIT), and with one
        label only PROBIT applies."""
        b = self.b
        x, _ = self.matrix(node, node.input[0])
        labels, strings = self.labels(a, "classlabels_ints", "classlabels_strings")
        intercepts = np.asarray(a.get("intercepts", []), np.float32)
        k = intercepts.size
        coef = np.asarray(a.get("coefficients", []), np.float32)
        if k == 0 or coef.size % k:
            raise CompileError(f"{_describe(node)}: {coef.size} coefficients do not divide "
                               f"into {k} classes (one intercept each)")
        scores = b.op("Add", [b.op("MatMul", [x, b.const(coef.reshape(k, -1).T.copy(),
                                                          "coefficients")]),
                              b.const(intercepts, "intercepts")], "scores")
        post = a.get("post_transform", "NONE")
        label_out = node.output[0]
        score_out = node.output[1] if len(node.output) > 1 else ""
        if k == 1:
            positive = b.op("Greater", [b.op("Reshape", [scores, b.const(
                np.asarray([-1], np.int64), "flat")]), b.const(np.float32(0), "zero")])
            index = b.op("Cast", [positive], to=_elem(np.int64))
            if len(labels) == 2:
                self.label_output(node, label_out, index, labels, strings)
            else:
                self.label_output(node, label_out, index, labels or [0, 1], strings,
                                  literal=True)
            if post == "PROBIT":
                scores = _probit(b, scores, np.float32)
            elif len(labels) == 2:
                scores = b.op("Concat", [b.op("Sub", [b.const(np.float32([[1]]), "one"),
                                                      scores]), scores], axis=1)
        else:
            if len(labels) != k:
                raise CompileError(f"{_describe(node)}: {len(labels)} class labels for {k} "
                                   "classes")
            # ONNX Runtime keeps the first class while scores are NaN (NaN > x is false).
            ranked = b.op("Where", [b.op("IsNaN", [scores]), b.const(np.float32(-np.inf),
                                                                      "nan_rank"), scores])
            index = b.op("ArgMax", [ranked], "index", axis=1, keepdims=0)
            self.label_output(node, label_out, index, labels, strings)
            scores = _post_transform(b, scores, post, np.float32)
        if score_out:
            b.op("Identity", [scores], out=score_out)

    def _tree_dtype(self, node) -> tuple[str, type]:
        """The input as ``[N, F]`` and the type thresholds compare in: float64 for a
        double input, else float32 (integers become float, as in ONNX Runtime)."""
        x, elem = self.matrix(node, node.input[0], allow_double=True)
        return x, (np.float64 if elem == _elem(np.float64) else np.float32)

    def TreeEnsembleRegressor(self, node, a):
        """TreeEnsembleRegressor, versions 1 and 3
        (https://onnx.ai/onnx/operators/onnx_aionnxml_TreeEnsembleRegressor.html):
        modes BRANCH_LEQ, LT, GTE, GT, EQ, NEQ; aggregate_function SUM, AVERAGE, MIN,
        MAX; base_values; post_transform. As ONNX Runtime: with one target a leaf counts
        its first weight and only PROBIT applies; with more, a target no leaf of a row
        has a weight for is 0 before the post_transform, base value or not."""
        x, dtype = self._tree_dtype(node)
        forest, n_trees = _forest_v1(node, a, "target", dtype)
        base = _tensor_attr(a, "base_values_as_tensor")
        base = list(a.get("base_values", [])) if base is None else base.tolist()
        y = self._regression(forest, x, dtype, int(a.get("n_targets", 1)),
                             a.get("aggregate_function", "SUM"), a.get("post_transform", "NONE"),
                             base, n_trees)
        self.b.op("Cast", [y], out=node.output[0], to=_elem(np.float32))

    def TreeEnsemble(self, node, a):
        """TreeEnsemble, version 5
        (https://onnx.ai/onnx/operators/onnx_aionnxml_TreeEnsemble.html): as
        TreeEnsembleRegressor, plus BRANCH_MEMBER (set membership, as the spec and ONNX's
        reference implementation have it: ONNX Runtime 1.32 also counts an x equal to
        the node's unused ``nodes_splits`` value as a member); the output has the
        input's type."""
        x, dtype = self._tree_dtype(node)
        forest = _forest_v5(node, a, dtype)
        agg = AGGREGATES[int(a.get("aggregate_function", 1))]
        post = POST_TRANSFORMS[int(a.get("post_transform", 0))]
        y = self._regression(forest, x, dtype, int(a.get("n_targets", 1)), agg, post, [],
                             len(forest.roots))
        out_elem = self.elem(node.input[0])
        self.b.op("Cast", [y], out=node.output[0],
                  to=out_elem if out_elem in (_elem(np.float32), _elem(np.float64))
                  else _elem(np.float32))

    def _regression(self, forest, x, dtype, n_targets, agg, post, base, n_trees) -> str:
        b = self.b
        if n_targets == 1:
            scores, _ = tree_scores(b, x, forest, 1, agg, dtype, first_weight_only=True)
            if agg == "AVERAGE":
                scores = b.op("Div", [scores, b.const(np.asarray(n_trees, dtype), "trees")])
            if len(base) == 1:
                scores = b.op("Add", [scores, b.const(np.asarray(base, dtype), "base")])
            return _probit(b, scores, dtype) if post == "PROBIT" else scores
        scores, hit = tree_scores(b, x, forest, n_targets, agg, dtype)
        if agg == "AVERAGE":
            scores = b.op("Div", [scores, b.const(np.asarray(n_trees, dtype), "trees")])
        if len(base) == n_targets:
            scores = b.op("Add", [scores, b.const(np.asarray(base, dtype), "base")])
        scores = b.where(hit, scores, b.const(np.asarray(0, dtype), "zero"))
        return _post_transform(b, scores, post, dtype)

    def TreeEnsembleClassifier(self, node, a):
        """TreeEnsembleClassifier, versions 1 and 3
        (https://onnx.ai/onnx/operators/onnx_aionnxml_TreeEnsembleClassifier.html):
        the class scores sum the leaves' weights, plus base_values; the label is the
        highest score's. ONNX Runtime's kernel, followed here, departs from the spec
        where two classes are scored by weights for one: it then derives the second
        score (``1 - s`` with weights all positive, else ``-s``, or the logistic of
        both) and the label from that score (above 0.5, or above 0)."""
        b = self.b
        x, dtype = self._tree_dtype(node)
        labels, strings = self.labels(a, "classlabels_int64s", "classlabels_strings")
        k = len(labels)
        if k < 2:
            raise CompileError(f"{_describe(node)}: it has {k} class labels; a classifier "
                               "has two or more")
        forest, _ = _forest_v1(node, a, "class", dtype)
        base = _tensor_attr(a, "base_values_as_tensor")
        base = list(a.get("base_values", [])) if base is None else base.tolist()
        post = a.get("post_transform", "NONE")
        scores, hit = tree_scores(b, x, forest, k, "SUM", dtype)
        scores = b.cast(scores, _elem(np.float32), _elem(dtype))
        f32 = np.float32
        zero = b.const(f32(0), "zero")
        label_out = node.output[0]
        score_out = node.output[1] if len(node.output) > 1 else ""
        if k > 2:
            if base:
                padded = np.zeros(k, f32)
                padded[:len(base)] = base[:k]
                scores = b.op("Add", [scores, b.const(padded, "base")])
                if hit is not None:
                    covered = np.arange(k) < len(base)
                    hit = b.op("Or", [hit, b.const(covered, "based")])
            ranked = b.where(hit, scores, b.const(f32(-np.inf), "absent"))
            index = b.op("ArgMax", [ranked], "index", axis=1, keepdims=0)
            self.label_output(node, label_out, index, labels, strings)
            z = _post_transform(b, b.where(hit, scores, zero), post, f32)
            if score_out:
                b.op("Identity", [z], out=score_out)
            return
        class_ids = {int(c) for c in a.get("class_ids", [])}
        weights = _tensor_attr(a, "class_weights_as_tensor")
        weights = list(a.get("class_weights", [])) if weights is None else weights.tolist()
        binary_case = len(class_ids) == 1
        all_positive = all(w >= 0 for w in weights)
        s0, s1 = b.column(scores, 0, "s0"), b.column(scores, 1, "s1")
        h0 = h1 = None
        if hit is not None:
            h0, h1 = b.column(hit, 0, "h0"), b.column(hit, 1, "h1")

        def c(v):
            return b.const(np.asarray([[v]], f32), "c")

        # Rows where ONNX Runtime keeps one score (no class-1 weight reached and at most
        # one base value), None: none.
        one_score: Optional[str] = None
        if len(base) == 2:
            # ONNX Runtime: with a class-1 weight, base_values[0] is not used and the
            # class-1 score is base_values[1] + the class-0 score.
            from_0 = b.op("Add", [s0, c(base[1])])
            s1_based = b.op("Add", [s1, c(base[1])])
            s0 = b.where(h1, b.op("Neg", [from_0]), b.op("Add", [s0, c(base[0])]))
            s1 = b.where(h1, from_0, s1_based)
        elif len(base) < 2:
            if base:
                s0 = b.op("Add", [s0, c(base[0])])
            one_score = None if h1 is None else b.op("Not", [h1])
        m0 = b.where(h0, s0, zero)
        pos = b.where(h1, s1, m0)  # a one-score row has no class-1 weight
        if binary_case:
            positive = b.op("Greater", [pos, c(0.5 if all_positive else 0.0)])
            family: Optional[str] = "01" if all_positive else "23"
        else:
            positive = b.op("Greater", [pos, c(0.0)])
            family = "23" if not base else None
        index = b.op("Cast", [b.op("Reshape", [positive, b.const(np.asarray([-1], np.int64),
                                                                 "flat")])],
                     to=_elem(np.int64))
        self.label_output(node, label_out, index, labels, strings, literal=not binary_case)
        m1 = b.where(h1, s1, zero)
        z = _post_transform(b, b.op("Concat", [m0, m1], axis=1), post, f32)
        if one_score is not None:
            # ONNX Runtime writes the first score only with PROBIT, or without a rule for
            # the second (the second column holds whatever its buffer held: 0 here).
            if post == "PROBIT":
                z1 = b.op("Concat", [_probit(b, m0, f32), b.op("Mul", [m0, zero])], axis=1)
            elif family is None:
                z1 = b.op("Concat", [m0, b.op("Mul", [m0, zero])], axis=1)
            elif post == "LOGISTIC":
                z1 = b.op("Concat", [b.op("Sigmoid", [b.op("Neg", [m0])]),
                                     b.op("Sigmoid", [m0])], axis=1)
            elif family == "01":
                z1 = b.op("Concat", [b.op("Sub", [c(1.0), m0]), m0], axis=1)
            else:
                z1 = b.op("Concat", [b.op("Neg", [m0]), m0], axis=1)
            z = b.op("Where", [one_score, z1, z])
        if score_out:
            b.op("Identity", [z], out=score_out)

    def ZipMap(self, node, a):
        """ZipMap makes a sequence of maps, which no tensor runtime serves: its output
        becomes the probability tensor it reads."""
        labels = list(a.get("classlabels_strings", [])) or \
            [int(v) for v in a.get("classlabels_int64s", [])]
        self.b.op("Identity", [node.input[0]], out=node.output[0])
        self.zipmaps[node.output[0]] = len(labels)
        self.report.notes.append(
            f"ZipMap (node {node.name or node.output[0]}) dropped: output "
            f"{node.output[0]!r} is the probability tensor [N, {len(labels)}], a column per "
            "class in the order of the labels, not a sequence of maps")

    # the graph ----------------------------------------------------------------------

    def run(self):
        from onnx import TensorProto, helper

        g = self.model.graph
        new_nodes = []
        lowered_outputs = set()
        for node in g.node:
            if node.domain != ML_DOMAIN:
                new_nodes.append(node)
                continue
            fn = getattr(self, node.op_type, None)
            if fn is None or node.op_type.startswith("_"):
                why = _REFUSED.get(node.op_type, "the compiler does not rewrite it into "
                                                 "standard ONNX")
                raise CompileError(f"ai.onnx.ml {_describe(node)} is not supported: {why}")
            self.b.nodes = []
            self.b.prefix = node.name or node.output[0]
            fn(node, _attrs(node))
            new_nodes.extend(self.b.nodes)
            lowered_outputs.update(o for o in node.output if o)
        del g.node[:]
        g.node.extend(new_nodes)
        used = {i for n in g.node for i in n.input}
        g.initializer.extend(i for i in self.b.inits if i.name in used)
        # Types of rewritten tensors come from the graph again (labels became indices).
        keep = [vi for vi in g.value_info if vi.name not in lowered_outputs]
        del g.value_info[:]
        g.value_info.extend(keep)
        self._string_labels(g)
        for vo in g.output:
            if vo.name in self.zipmaps:
                vo.type.CopyFrom(helper.make_tensor_type_proto(
                    TensorProto.FLOAT, [None, self.zipmaps[vo.name]]))
            elif vo.name in self.string_labels:
                shape = [None] * len(vo.type.tensor_type.shape.dim)
                vo.type.CopyFrom(helper.make_tensor_type_proto(TensorProto.INT64, shape))
                labels = self.string_labels[vo.name]
                self.report.notes.append(
                    f"output {vo.name!r} is the index (int64) of the class in the labels "
                    f"{labels} (the model's labels are strings, and the edge runtime serves "
                    "numeric tensors)")
        if not any(n.domain == ML_DOMAIN for n in g.node):
            keep_ops = [o for o in self.model.opset_import if o.domain != ML_DOMAIN]
            del self.model.opset_import[:]
            self.model.opset_import.extend(keep_ops)

    def _string_labels(self, g) -> None:
        """Follow string-label indices through Identity nodes; refuse other readers."""
        for node in g.node:
            read = [i for i in node.input if i in self.string_labels]
            if not read:
                continue
            if node.op_type == "Identity":
                self.string_labels[node.output[0]] = self.string_labels[read[0]]
                continue
            raise CompileError(f"{_describe(node)} reads {read[0]!r}, the class label as a "
                               "string, and the edge runtime serves numeric tensors; export "
                               "the model with integer class labels")


def _ensure_opset(model):
    """``model`` with a standard opset of :data:`MIN_OPSET` or more (ONNX's version
    converter upgrades an older one)."""
    from onnx import helper, version_converter

    current = [int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if current and current[0] >= MIN_OPSET:
        return model
    if not current:
        model.opset_import.append(helper.make_opsetid("", MIN_OPSET))
        return model
    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises RuntimeError, ValueError, ...
        raise CompileError(f"the model's opset {current[0]} could not be converted to opset "
                           f"{MIN_OPSET}, which its ai.onnx.ml operators are rewritten in: "
                           f"{exc}") from None


def has_onnx_ml(model) -> bool:
    """Whether the main graph of ``model`` has ``ai.onnx.ml`` nodes."""
    return any(n.domain == ML_DOMAIN for n in model.graph.node)


def lower_onnx_ml(model, model_name: Optional[str] = None):
    """``model`` with its ``ai.onnx.ml`` nodes rewritten into standard ONNX (a new
    ``ModelProto``), or ``model`` itself if it has none.

    Raises :class:`~neo_edge_runtime.errors.CompileError` naming the node for what
    cannot be rewritten (string inputs, maps, support vector machines, ...), prefixed
    with ``model_name`` if given. What changed for users of the model (ZipMap dropped,
    string labels as indices) is added to the active :func:`recording`.
    """
    from onnx import ModelProto

    if not has_onnx_ml(model):
        return model
    out = ModelProto()
    out.CopyFrom(model)
    report = _REPORT.get() or Report()
    try:
        out = _ensure_opset(out)
        _Lowering(out, report).run()
    except CompileError as exc:
        raise CompileError(f"{model_name}: {exc}" if model_name else str(exc)) from None
    return out
