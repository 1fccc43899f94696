"""XGBoost tree ensembles as plain ONNX tensor operations, for TVM.

TVM's ONNX frontend has no ``ai.onnx.ml`` tree-ensemble operators, and the converters
that lower trees to standard tensor ops (Hummingbird) need PyTorch. This module does
the same lowering with ``onnx.helper`` alone, using the "tree traversal" strategy:
every tree is walked one level per step, all trees of the ensemble at once:

    node  = root of every tree                                     [N, T]
    repeat max_depth times:
        x    = X[n, feature[node]]                                  (GatherElements)
        go_left = x < threshold[node]  or  (isnan(x) and default_left[node])
        node = where(go_left, left[node], right[node])              (leaves loop to themselves)
    margin = sum over trees of leaf_value[node] per output group + base margin

Comparisons and leaf values are float32, as in XGBoost, so predictions match
``Booster.predict`` up to the order of the float32 summation.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..errors import CompileError

SUPPORTED_OBJECTIVES = (
    "reg:squarederror", "reg:linear", "reg:logistic", "binary:logistic",
    "binary:logitraw", "multi:softprob", "multi:softmax", "reg:absoluteerror",
)


def _floats(text: Any) -> list[float]:
    """XGBoost writes base_score as '5E-1' or, since 2.x/3.x, '[5E-1,2E-1]'."""
    s = str(text).strip().strip("[]")
    return [float(v) for v in s.split(",") if v.strip()]


def load_xgboost_json(path: str) -> dict:
    """Read an XGBoost model saved as JSON (``.json``) or UBJSON (``.ubj``)."""
    try:
        import xgboost as xgb
    except ImportError as exc:  # pragma: no cover - xgboost is a pinned dependency
        raise CompileError("compiling XGBoost models needs the xgboost package") from exc
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except xgb.core.XGBoostError as exc:
        raise CompileError(f"{path} is not an XGBoost model file: {exc}") from exc
    return json.loads(booster.save_raw("json"))


def xgboost_to_onnx(model: dict, model_name: str = "xgboost"):
    """Lower an XGBoost model (its JSON dict) to an ONNX ``ModelProto``.

    The graph has one input ``input`` of shape ``[1, num_feature]`` float32 (batch 1,
    as the edge runtime serves) and one output: ``probabilities`` ``[1, K]`` for
    classifiers (K = 2 for binary), or ``predictions`` ``[1, 1]`` for regressors.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    learner = model["learner"]
    objective = learner["objective"]["name"]
    if objective not in SUPPORTED_OBJECTIVES:
        raise CompileError(f"xgboost objective {objective!r} is not supported; supported "
                           f"objectives are {', '.join(SUPPORTED_OBJECTIVES)}")
    booster = learner["gradient_booster"]
    if booster.get("name") != "gbtree":
        raise CompileError(f"only gbtree boosters compile; got {booster.get('name')!r}")
    params = learner["learner_model_param"]
    num_feature = int(params["num_feature"])
    num_class = int(params.get("num_class", "0"))
    groups = max(num_class, 1)
    trees = booster["model"]["trees"]
    tree_info = [int(v) for v in booster["model"]["tree_info"]]
    if not trees:
        raise CompileError("the xgboost model has no trees")

    feature, threshold, left, right, default_left, value, roots = [], [], [], [], [], [], []
    max_depth = 0
    for tree in trees:
        offset = len(feature)
        roots.append(offset)
        lc, rc = tree["left_children"], tree["right_children"]
        n = len(lc)
        depth = [0] * n
        for i in range(n):
            leaf = lc[i] == -1
            feature.append(0 if leaf else int(tree["split_indices"][i]))
            threshold.append(float(tree["split_conditions"][i]))
            left.append(offset + (i if leaf else lc[i]))
            right.append(offset + (i if leaf else rc[i]))
            default_left.append(bool(tree["default_left"][i]) and not leaf)
            value.append(float(tree["split_conditions"][i]) if leaf else 0.0)
            if not leaf:
                depth[lc[i]] = depth[rc[i]] = depth[i] + 1
        max_depth = max(max_depth, max(depth))

    base = _floats(params["base_score"])
    if len(base) == 1:
        base = base * groups
    if objective in ("binary:logistic", "reg:logistic"):
        base = [math.log(b / (1.0 - b)) for b in base]
    group_matrix = np.zeros((len(trees), groups), dtype=np.float32)
    group_matrix[np.arange(len(trees)), tree_info] = 1.0

    def const(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    inits = [
        const("feature", np.asarray(feature, dtype=np.int64)),
        const("threshold", np.asarray(threshold, dtype=np.float32)),
        const("left", np.asarray(left, dtype=np.int64)),
        const("right", np.asarray(right, dtype=np.int64)),
        const("default_left", np.asarray(default_left, dtype=bool)),
        const("leaf_value", np.asarray(value, dtype=np.float32)),
        const("roots", np.asarray([roots], dtype=np.int64)),
        const("group_matrix", group_matrix),
        const("base_margin", np.asarray([base], dtype=np.float32)),
    ]
    nodes = [helper.make_node("Identity", ["roots"], ["node0"])]
    for d in range(max_depth):
        cur, nxt = f"node{d}", f"node{d + 1}"
        nodes += [
            helper.make_node("Gather", ["feature", cur], [f"feat{d}"]),
            helper.make_node("GatherElements", ["input", f"feat{d}"], [f"x{d}"], axis=1),
            helper.make_node("Gather", ["threshold", cur], [f"thr{d}"]),
            helper.make_node("Less", [f"x{d}", f"thr{d}"], [f"lt{d}"]),
            helper.make_node("IsNaN", [f"x{d}"], [f"nan{d}"]),
            helper.make_node("Gather", ["default_left", cur], [f"dl{d}"]),
            helper.make_node("And", [f"nan{d}", f"dl{d}"], [f"nanleft{d}"]),
            helper.make_node("Or", [f"lt{d}", f"nanleft{d}"], [f"goleft{d}"]),
            helper.make_node("Gather", ["left", cur], [f"l{d}"]),
            helper.make_node("Gather", ["right", cur], [f"r{d}"]),
            helper.make_node("Where", [f"goleft{d}", f"l{d}", f"r{d}"], [nxt]),
        ]
    nodes += [
        helper.make_node("Gather", ["leaf_value", f"node{max_depth}"], ["leaves"]),
        helper.make_node("MatMul", ["leaves", "group_matrix"], ["margin_trees"]),
        helper.make_node("Add", ["margin_trees", "base_margin"], ["margin"]),
    ]
    if objective in ("binary:logistic", "reg:logistic"):
        nodes.append(helper.make_node("Sigmoid", ["margin"], ["p1"]))
        if objective == "binary:logistic":
            nodes += [helper.make_node("Sub", ["one", "p1"], ["p0"]),
                      helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1)]
            inits.append(const("one", np.asarray([[1.0]], dtype=np.float32)))
            out_name, out_shape = "probabilities", [1, 2]
        else:
            nodes.append(helper.make_node("Identity", ["p1"], ["predictions"]))
            out_name, out_shape = "predictions", [1, 1]
    elif objective.startswith("multi:"):
        nodes.append(helper.make_node("Softmax", ["margin"], ["probabilities"], axis=1))
        out_name, out_shape = "probabilities", [1, groups]
    else:
        nodes.append(helper.make_node("Identity", ["margin"], ["predictions"]))
        out_name, out_shape = "predictions", [1, 1]

    graph = helper.make_graph(
        nodes, model_name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, num_feature])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                   producer_name="neo-edge")
    onnx.checker.check_model(onnx_model)
    return onnx_model
