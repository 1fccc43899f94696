"""XGBoost tree ensembles as plain ONNX tensor operations, for TVM.

TVM's ONNX frontend has no ``ai.onnx.ml`` tree-ensemble operators, and the converters
that lower trees to standard tensor ops (Hummingbird) need PyTorch. The trees become a
:class:`~.onnx_ml.Forest` evaluated by :func:`~.onnx_ml.tree_scores`, the same tree
lowering the ONNX-ML tree ensembles (scikit-learn's, through skl2onnx) get: every tree
walked one level per step, all trees at once, XGBoost's split ``x < threshold`` (NaN:
``default_left``) as BRANCH_LT with the left child true; the leaves' values summed per
output group, plus the base margin.

Comparisons and leaf values are float32, as in XGBoost, so predictions match
``Booster.predict`` up to the order of the float32 summation.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..errors import CompileError
from .onnx_ml import Forest, Builder, tree_scores

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
    from onnx import TensorProto, helper

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

    # XGBoost goes left where x < threshold, and a missing (NaN) x where default_left:
    # BRANCH_LT with the left child true and default_left as the NaN track.
    forest = Forest()
    for tree, group in zip(trees, tree_info):
        offset = len(forest.mode)
        forest.roots.append(offset)
        lc, rc = tree["left_children"], tree["right_children"]
        for i in range(len(lc)):
            value = float(np.float32(tree["split_conditions"][i]))
            if lc[i] == -1:
                forest.add("LEAF", weights=[(group, value)])
            else:
                forest.add("BRANCH_LT", int(tree["split_indices"][i]), value, offset + lc[i],
                           offset + rc[i], bool(tree["default_left"][i]))

    base = _floats(params["base_score"])
    if len(base) == 1:
        base = base * groups
    if objective in ("binary:logistic", "reg:logistic"):
        base = [math.log(b / (1.0 - b)) for b in base]

    b = Builder({"input"}, 17)
    b.prefix = "xgboost"
    trees_margin, _ = tree_scores(b, "input", forest, groups, "SUM", np.float32)
    margin = b.op("Add", [trees_margin, b.const(np.asarray([base], np.float32), "base_margin")],
                  "margin")
    if objective in ("binary:logistic", "reg:logistic"):
        p1 = b.op("Sigmoid", [margin], "p1")
        if objective == "binary:logistic":
            p0 = b.op("Sub", [b.const(np.asarray([[1.0]], np.float32), "one"), p1], "p0")
            b.op("Concat", [p0, p1], out="probabilities", axis=1)
            out_name, out_shape = "probabilities", [1, 2]
        else:
            b.op("Identity", [p1], out="predictions")
            out_name, out_shape = "predictions", [1, 1]
    elif objective.startswith("multi:"):
        b.op("Softmax", [margin], out="probabilities", axis=1)
        out_name, out_shape = "probabilities", [1, groups]
    else:
        b.op("Identity", [margin], out="predictions")
        out_name, out_shape = "predictions", [1, 1]
    nodes, inits = b.nodes, b.inits

    graph = helper.make_graph(
        nodes, model_name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, num_feature])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                   producer_name="neo-edge")
    onnx.checker.check_model(onnx_model)
    return onnx_model
