"""scikit-learn models exported by skl2onnx (ONNX-ML operators, domain ai.onnx.ml)
compile for this machine and give what ONNX Runtime gives on the exporter's own file.

The models are real skl2onnx exports of small estimators fitted on scikit-learn's iris
data (with missing values where the estimator takes them); the inputs are training
rows, random rows, rows with a feature exactly on a split threshold of the exported
trees, and rows with NaN. To keep the suite fast, the exports at opset 17 are compiled
together as one model (each export's names prefixed, :func:`_merged`), one artifact for
all; the exports at skl2onnx's default opsets (9, ...: the version converter's path)
get one artifact each.

Also here: ONNX's backend node test cases for ai.onnx.ml (through the ONNX backend), and
a property test of the tree lowering against ONNX Runtime's tree kernels on generated
ensembles (every node mode, NaN tracks, aggregates, post transforms, base values).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, note, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from neo_edge_runtime import CompileError, EdgeModel, compile_model
from neo_edge_runtime.artifact import MANIFEST
from neo_edge_runtime.compile.onnx_ml import lower_onnx_ml

pytest.importorskip("skl2onnx")
pytest.importorskip("sklearn")

#: Rows each compiled model takes (skl2onnx exports a dynamic batch ['N', F]).
ROWS = 24
#: What ONNX Runtime gives and the compiled model must give: probabilities and values
#: within ATOL, labels exactly.
ATOL = 1e-4


def _iris(missing: tuple = ()):
    """Iris, petal width in tenths of a centimetre (integers: a category for
    OneHotEncoder), with about 10% of ``missing`` columns NaN."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    X[:, 3] = np.round(X[:, 3] * 10)
    if missing:  # scikit-learn's trees and imputers learn what a missing value means
        rng = np.random.default_rng(1)
        X[:, missing] = np.where(rng.random((len(X), len(missing))) < 0.1, np.nan,
                                 X[:, missing])
    return X, y


def _estimators() -> dict:
    """name: (estimator factory, target kind, the columns with missing values)."""
    from sklearn import (compose, ensemble, impute, linear_model, neural_network, pipeline,
                         preprocessing, svm, tree)

    every = (0, 1, 2, 3)

    return {
        "logistic_regression_binary": (lambda: linear_model.LogisticRegression(), "binary",
                                       ()),
        "logistic_regression_multiclass": (lambda: linear_model.LogisticRegression(),
                                           "multiclass", ()),
        "linear_regression": (lambda: linear_model.LinearRegression(), "value", ()),
        "random_forest_classifier": (lambda: ensemble.RandomForestClassifier(
            n_estimators=3, max_depth=3, random_state=0), "multiclass", every),
        "random_forest_binary": (lambda: ensemble.RandomForestClassifier(
            n_estimators=3, max_depth=3, random_state=0), "binary", every),
        "random_forest_regressor": (lambda: ensemble.RandomForestRegressor(
            n_estimators=3, max_depth=3, random_state=0), "value", every),
        "gradient_boosting_classifier": (lambda: ensemble.GradientBoostingClassifier(
            n_estimators=3, max_depth=2, random_state=0), "multiclass", ()),
        "gradient_boosting_binary": (lambda: ensemble.GradientBoostingClassifier(
            n_estimators=3, max_depth=2, random_state=0), "binary", ()),
        "decision_tree": (lambda: tree.DecisionTreeClassifier(max_depth=4, random_state=0),
                          "multiclass", every),
        "extra_trees_regressor": (lambda: ensemble.ExtraTreesRegressor(
            n_estimators=3, max_depth=3, random_state=0), "value", ()),
        "standard_scaler_logistic_regression": (lambda: pipeline.make_pipeline(
            preprocessing.StandardScaler(), linear_model.LogisticRegression()), "multiclass",
            ()),
        "minmax_scaler_normalizer_l2": (lambda: pipeline.make_pipeline(
            preprocessing.MinMaxScaler(), preprocessing.Normalizer("l2"),
            linear_model.LogisticRegression()), "multiclass", ()),
        "normalizer_l1_max_linear_regression": (lambda: pipeline.make_pipeline(
            preprocessing.Normalizer("l1"), preprocessing.Normalizer("max"),
            linear_model.LinearRegression()), "value", ()),
        "linear_svc": (lambda: svm.LinearSVC(), "multiclass", ()),
        "linear_svc_binary": (lambda: svm.LinearSVC(), "binary", ()),
        "standard_scaler_mlp_regressor": (lambda: pipeline.make_pipeline(
            preprocessing.StandardScaler(),
            neural_network.MLPRegressor(hidden_layer_sizes=(8,), max_iter=50, random_state=0)),
            "value", ()),
        "imputer_one_hot_encoder_logistic_regression": (lambda: pipeline.make_pipeline(
            compose.ColumnTransformer([
                ("numbers", impute.SimpleImputer(), [0, 1, 2]),
                ("category", preprocessing.OneHotEncoder(handle_unknown="ignore"), [3])]),
            linear_model.LogisticRegression()), "multiclass", (0, 1, 2)),
    }


def _target(kind: str, X, y):
    if kind == "binary":
        return np.where(y == 1, 7, 3)  # labels other than 0 and 1
    if kind == "value":
        return np.nan_to_num(X[:, 0]) * 2.0 + y
    return y


def _fit(name: str):
    factory, kind, missing = _estimators()[name]
    X, y = _iris(missing)
    with warnings.catch_warnings():  # not converging in a few iterations is fine here
        warnings.simplefilter("ignore")
        return factory().fit(X, _target(kind, X, y)), missing


def _thresholds(model) -> list[tuple[int, float]]:
    """(feature, threshold) of every split of the tree ensembles in ``model``."""
    out = []
    for node in model.graph.node:
        if node.op_type.startswith("TreeEnsemble"):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            for f, v, m in zip(attrs["nodes_featureids"], attrs["nodes_values"],
                               attrs["nodes_modes"]):
                if m != b"LEAF":
                    out.append((int(f), float(np.float32(v))))
    return out


def _inputs(model, missing: tuple, seed: int) -> np.ndarray:
    """Training rows, random rows, rows on split thresholds, rows with NaN in the
    ``missing`` columns."""
    X, _ = _iris()
    rng = np.random.default_rng(seed)
    rows = np.concatenate([X[::37][:4], rng.normal(X.mean(0), X.std(0) * 1.5, (ROWS - 4, 4))])
    rows = rows.astype(np.float32)
    for k, (f, v) in enumerate(_thresholds(model)[:8]):
        rows[4 + k, f] = v
    if missing:
        tail = rows[16:, missing]
        tail[rng.random(tail.shape) < 0.4] = np.nan
        tail[-1, :] = np.nan
        rows[16:, missing] = tail
    return rows


def _export(name: str, folder, target_opset=None):
    from skl2onnx import to_onnx

    est, missing = _fit(name)
    X, _ = _iris()
    model = to_onnx(est, X[:1], target_opset=target_opset)
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    return path, model, _inputs(model, missing, seed=len(name))


def _merged(models: dict) -> onnx.ModelProto:
    """One model computing all of ``models`` (name: ModelProto of the same opsets), every
    tensor of each prefixed with ``<name>/``."""
    from onnx import compose

    graph = helper.make_graph([], "merged", [], [])
    for name, model in models.items():
        g = compose.add_prefix(model, f"{name}/").graph
        graph.node.extend(g.node)
        graph.input.extend(g.input)
        graph.output.extend(g.output)
        graph.initializer.extend(g.initializer)
        graph.value_info.extend(g.value_info)
    first = next(iter(models.values()))
    merged = helper.make_model(graph, opset_imports=list(first.opset_import))
    merged.ir_version = first.ir_version
    onnx.checker.check_model(merged)
    return merged


def _expected(model_or_path, feeds: dict) -> dict:
    """ONNX Runtime's outputs by name; a ZipMap's sequence of maps as a [N, K] tensor
    (columns in the order of its labels)."""
    m = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(model_or_path)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out = {}
    for meta, value in zip(sess.get_outputs(), sess.run(None, feeds)):
        if isinstance(value, list):
            value = np.array([list(d.values()) for d in value], dtype=np.float32)
        out[meta.name] = value
    return out


def _assert_matches(got: dict, expected: dict, labels=None) -> None:
    assert list(got) == list(expected)
    for name, theirs in expected.items():
        ours = got[name]
        if theirs.dtype.kind in "OU":  # string labels: the artifact gives their index
            theirs = np.array([labels.index(v) for v in theirs], dtype=np.int64)
        if theirs.dtype.kind == "i":
            np.testing.assert_array_equal(ours.reshape(theirs.shape), theirs, err_msg=name)
        else:
            assert ours.shape == theirs.shape, name
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL, err_msg=name)


@pytest.fixture(scope="module")
def opset17(tmp_path_factory):
    """Every estimator exported at opset 17 (ai.onnx.ml 3), and one artifact for all."""
    folder = tmp_path_factory.mktemp("skl2onnx")
    exports = {n: _export(n, folder, {"": 17, "ai.onnx.ml": 3}) for n in _estimators()}
    merged = _merged({n: m for n, (_, m, _) in exports.items()})
    path = folder / "merged.onnx"
    onnx.save(merged, path)
    art = compile_model(path, "host", folder / "art",
                        input_shapes={vi.name: [ROWS, 4] for vi in merged.graph.input})
    feeds = {f"{n}/{vi.name}": rows for n, (_, m, rows) in exports.items()
             for vi in m.graph.input}
    return exports, EdgeModel.load(art).predict(feeds)


@pytest.mark.parametrize("name", list(_estimators()))
def test_skl2onnx_export_matches_onnxruntime(opset17, name):
    exports, predicted = opset17
    path, model, rows = exports[name]
    expected = _expected(path, {vi.name: rows for vi in model.graph.input})
    got = {k.split("/", 1)[1]: v for k, v in predicted.items() if k.startswith(f"{name}/")}
    _assert_matches(got, expected)


@pytest.fixture(scope="module")
def default_opset(tmp_path_factory):
    """A folder for exports at skl2onnx's default opsets and their artifacts."""
    return tmp_path_factory.mktemp("skl2onnx-default")


def test_default_opset_export_with_string_labels_and_zipmap(default_opset):
    """skl2onnx's own choice of opsets, string class labels (the label output is the
    index into the labels the manifest records) and its ZipMap (the probabilities as a
    tensor, under the ZipMap's output name)."""
    from sklearn.ensemble import GradientBoostingClassifier
    from skl2onnx import to_onnx

    X, y = _iris()
    names = np.array(["setosa", "versicolor", "virginica"])
    est = GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0)
    est.fit(X, names[y])
    model = to_onnx(est, X[:1])
    assert "ZipMap" in [n.op_type for n in model.graph.node]
    path = default_opset / "gb_strings.onnx"
    onnx.save(model, path)
    logged = []
    art = compile_model(path, "host", default_opset / "art", input_shapes={"X": [ROWS, 4]},
                        log=logged.append)
    manifest = json.loads((art / MANIFEST).read_text())
    assert manifest["metadata"]["labels"] == list(names)
    assert manifest["onnx_ml"] == [n for n in logged if "ZipMap" in n or "index" in n]
    assert any("ZipMap (node ZipMap) dropped: output 'output_probability' is the "
               "probability tensor [N, 3]" in n for n in manifest["onnx_ml"])
    assert [o["dtype"] for o in manifest["outputs"]] == ["int64", "float32"]
    rows = _inputs(model, (), seed=3)
    _assert_matches(EdgeModel.load(art).predict({"X": rows}), _expected(path, {"X": rows}),
                    labels=list(names))


def test_opset_9_export_is_converted_first(default_opset):
    """skl2onnx writes a forest with integer labels at opset 9: ONNX's version converter
    takes it to opset 13 before the rewrite (GatherElements, LessOrEqual)."""
    from skl2onnx import to_onnx

    est, missing = _fit("random_forest_classifier")
    X, _ = _iris()
    model = to_onnx(est, X[:1])
    assert {o.domain: o.version for o in model.opset_import}[""] == 9
    path = default_opset / "forest9.onnx"
    onnx.save(model, path)
    art = compile_model(path, "host", default_opset / "forest9", input_shapes={"X": [ROWS, 4]})
    assert json.loads((art / MANIFEST).read_text())["metadata"] == {"labels": [0, 1, 2]}
    rows = _inputs(model, missing, seed=9)
    _assert_matches(EdgeModel.load(art).predict({"X": rows}), _expected(path, {"X": rows}))


def test_user_metadata_labels_win_over_the_models(default_opset):
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import to_onnx

    X, y = _iris()
    model = to_onnx(LogisticRegression().fit(X, y), X[:1], options={"zipmap": False})
    path = default_opset / "lr.onnx"
    onnx.save(model, path)
    art = compile_model(path, "host", default_opset / "lr", input_shapes={"X": [2, 4]},
                        metadata={"labels": ["a", "b", "c"], "task": "classification"})
    manifest = json.loads((art / MANIFEST).read_text())
    assert manifest["metadata"] == {"labels": ["a", "b", "c"], "task": "classification"}
    assert "onnx_ml" not in manifest  # nothing a user sees changed


def test_fails_naming_the_svm_node(default_opset):
    from sklearn.svm import SVC
    from skl2onnx import to_onnx

    X, y = _iris()
    path = default_opset / "svc.onnx"
    onnx.save(to_onnx(SVC().fit(X, y), X[:1]), path)
    with pytest.raises(CompileError, match=r"^svc.onnx: ai.onnx.ml SVMClassifier \(node "
                                           r"\w+\) is not supported: support vector machines"):
        compile_model(path, "host", default_opset / "svc", input_shapes={"X": [1, 4]})
    assert not (default_opset / "svc").exists()


def test_fails_when_a_string_label_is_computed_on():
    """A string label read by anything but Identity cannot be an index."""
    node = helper.make_node("LinearClassifier", ["X"], ["label", "scores"],
                            domain="ai.onnx.ml", coefficients=[1.0, -1.0, 0.5, 0.5],
                            intercepts=[0.0, 0.0], classlabels_strings=["a", "b"])
    graph = helper.make_graph(
        [node, helper.make_node("Concat", ["label", "label"], ["both"], axis=0)], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("both", TensorProto.STRING, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    with pytest.raises(CompileError, match=r"Concat \(node both\) reads 'label', the class "
                                           r"label as a string"):
        lower_onnx_ml(model)


# -- ONNX's backend node test cases ----------------------------------------------------


def _ml_cases() -> dict:
    import importlib

    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in ("array_feature_extractor", "binarizer", "label_encoder",
                       "tree_ensemble"):
            importlib.import_module(f"{node.__name__}.ai_onnx_ml.{module}")
    return {c.name: c for c in node._NodeTestCases if c.name.startswith("test_ai_onnx_ml_")}


ML_CASES = sorted(_ml_cases())
#: The backend cases with string tensors (LabelEncoder from strings): refused.
STRING_CASES = [n for n in ML_CASES if "label_encoder" in n]


def test_backend_has_the_ml_cases_this_module_expects():
    assert {"test_ai_onnx_ml_array_feature_extractor", "test_ai_onnx_ml_binarizer",
            "test_ai_onnx_ml_tree_ensemble_single_tree",
            "test_ai_onnx_ml_tree_ensemble_set_membership"} <= set(ML_CASES)
    assert len(STRING_CASES) == 4


@pytest.mark.parametrize("name", [n for n in ML_CASES if n not in STRING_CASES])
def test_backend_case_matches_reference(name):
    from onnx.backend.test.runner import Runner, _normalize_tensor

    from neo_edge_runtime.compile import onnx_backend

    case = _ml_cases()[name]
    rep = onnx_backend.prepare(case.model, "CPU")
    try:
        for inputs, expected in case.data_sets:
            outputs = rep.run([_normalize_tensor(x) for x in inputs])
            Runner.assert_similar_outputs([_normalize_tensor(x) for x in expected], outputs,
                                          rtol=case.rtol, atol=case.atol)
    finally:
        rep.close()


@pytest.mark.parametrize("name", STRING_CASES)
def test_backend_string_case_is_refused(name):
    from neo_edge_runtime.compile import onnx_backend

    case = _ml_cases()[name]
    with pytest.raises(CompileError, match=r"'X' is a tensor of .*STRING; the edge runtime "
                                           r"serves numeric tensors"):
        onnx_backend.prepare(case.model, "CPU")


# -- the tree lowering, property-tested against ONNX Runtime's tree kernels -------------

MODES = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]
#: Thresholds and input values share this grid, so inputs land on thresholds often.
GRID = [-1.5, -0.5, 0.0, 0.5, 1.0]


@st.composite
def _tree(draw, tree_id: int, n_features: int, targets: list[int], one_weight: bool):
    """One tree's node and weight attribute entries (ids within the tree)."""
    nodes, weights = [], []

    def grow(depth: int) -> int:
        nid = len(nodes)
        nodes.append(None)
        if depth == 0 or draw(st.booleans()) and depth < 3:
            nodes[nid] = (tree_id, nid, 0, 0, 0, "LEAF", 0.0, 0)
            chosen = [draw(st.sampled_from(targets))] if one_weight else \
                draw(st.lists(st.sampled_from(targets), min_size=1, max_size=len(targets),
                              unique=True))
            for t in chosen:
                weights.append((tree_id, nid, t, draw(st.sampled_from([-1.0, -0.25, 0.5,
                                                                        1.0, 2.0]))))
            return nid
        feature = draw(st.integers(0, n_features - 1))
        mode = draw(st.sampled_from(MODES))
        threshold = draw(st.sampled_from(GRID))
        missing = int(draw(st.booleans()))
        t = grow(depth - 1)
        f = grow(depth - 1)
        nodes[nid] = (tree_id, nid, t, f, feature, mode, threshold, missing)
        return nid

    grow(draw(st.integers(1, 3)))
    return nodes, weights


@st.composite
def _ensemble(draw):
    """A TreeEnsembleRegressor or TreeEnsembleClassifier node (ai.onnx.ml 3) and a batch
    of inputs on its thresholds, between them, and NaN."""
    n_features = draw(st.integers(1, 3))
    classifier = draw(st.booleans())
    if classifier:
        n = draw(st.integers(2, 4))
        binary_case = n == 2 and draw(st.booleans())  # weights for class 0 only
        targets = [0] if binary_case else list(range(n))
        post = draw(st.sampled_from(["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"] +
                                    ([] if n == 2 else ["PROBIT"])))
        bases = [0, 2] if n == 2 and not binary_case else [0, 1, 2] if n == 2 else [0, n]
        n_base = draw(st.sampled_from(bases))
    else:
        n = draw(st.integers(1, 3))
        targets = list(range(n))
        post = draw(st.sampled_from(["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"]))
        n_base = draw(st.sampled_from([0, n]))
    n_trees = draw(st.integers(1, 3))
    nodes, weights = [], []
    for t in range(n_trees):
        tn, tw = draw(_tree(t, n_features, targets, one_weight=not classifier and n == 1))
        nodes += tn
        weights += tw
    base = [draw(st.sampled_from([-0.5, 0.0, 0.25, 1.0])) for _ in range(n_base)]
    if post == "PROBIT":  # probit of a value outside (0, 1) is NaN: keep scores inside
        weights = [(a, b, c, 0.1) for a, b, c, _ in weights]
        base = [0.05] * n_base
    attrs = dict(
        nodes_treeids=[v[0] for v in nodes], nodes_nodeids=[v[1] for v in nodes],
        nodes_truenodeids=[v[2] for v in nodes], nodes_falsenodeids=[v[3] for v in nodes],
        nodes_featureids=[v[4] for v in nodes], nodes_modes=[v[5] for v in nodes],
        nodes_values=[v[6] for v in nodes],
        nodes_missing_value_tracks_true=[v[7] for v in nodes], post_transform=post)
    if base:
        attrs["base_values"] = base
    prefix = "class" if classifier else "target"
    attrs.update({f"{prefix}_treeids": [w[0] for w in weights],
                  f"{prefix}_nodeids": [w[1] for w in weights],
                  f"{prefix}_ids": [w[2] for w in weights],
                  f"{prefix}_weights": [w[3] for w in weights]})
    if classifier:
        attrs["classlabels_int64s"] = list(range(10, 10 + n))
        outs = [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, n])]
        node = helper.make_node("TreeEnsembleClassifier", ["X"], ["label", "scores"],
                                domain="ai.onnx.ml", **attrs)
    else:
        attrs["n_targets"] = n
        attrs["aggregate_function"] = draw(st.sampled_from(["SUM", "AVERAGE", "MIN", "MAX"]))
        outs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, n])]
        node = helper.make_node("TreeEnsembleRegressor", ["X"], ["scores"],
                                domain="ai.onnx.ml", **attrs)
    graph = helper.make_graph([node], "trees",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                             [None, n_features])], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    values = st.sampled_from(GRID + [-1.0, 0.25, 0.75, 2.0, float("nan")])
    rows = draw(st.lists(st.lists(values, min_size=n_features, max_size=n_features),
                         min_size=1, max_size=6))
    return model, np.asarray(rows, dtype=np.float32)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ensemble())
def test_tree_lowering_matches_onnxruntime(case):
    """The lowered graph (standard ONNX only) run by ONNX Runtime gives what ONNX
    Runtime's own TreeEnsembleRegressor/Classifier kernel gives."""
    model, rows = case
    note(str({a.name: helper.get_attribute_value(a) for a in model.graph.node[0].attribute}))
    lowered = lower_onnx_ml(model)
    assert not any(n.domain for n in lowered.graph.node)
    onnx.checker.check_model(lowered)
    expected = _expected(model, {"X": rows})
    got = _expected(lowered, {"X": rows})
    _assert_matches(got, expected)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_tree_ensemble_5_lowering_matches_the_reference(data):
    """TreeEnsemble (ai.onnx.ml 5), set membership included, against ONNX's reference
    implementation and ONNX Runtime."""
    from onnx.reference import ReferenceEvaluator

    n_features = data.draw(st.integers(1, 2))
    n_nodes = data.draw(st.integers(1, 4))
    n_leaves = n_nodes + 1
    modes, splits, features, trues, falses, tleaf, fleaf, members = [], [], [], [], [], [], [], []
    for i in range(n_nodes):  # a chain: node i's false branch is node i + 1 or a leaf
        modes.append(data.draw(st.integers(0, 6)))
        # ONNX Runtime 1.32 also takes a BRANCH_MEMBER node's x equal to its split value
        # (which the spec leaves unused) as a member: those splits are a value no input has.
        splits.append(99.0 if modes[-1] == 6 else data.draw(st.sampled_from(GRID)))
        features.append(data.draw(st.integers(0, n_features - 1)))
        trues.append(i)
        tleaf.append(1)
        last = i == n_nodes - 1
        falses.append(n_nodes if last else i + 1)
        fleaf.append(1 if last else 0)
        if modes[-1] == 6:
            # ONNX Runtime implements integer members only. No 0.0: onnx 1.23's reference
            # reads the members with `while (m := next(it)) and not isnan(m)`, so a 0.0
            # member ends its set there (and shifts the sets after it).
            members += data.draw(st.lists(st.sampled_from([-1.0, 1.0, 2.0, 3.0]), min_size=1,
                                          max_size=3, unique=True)) + [float("nan")]
    n_targets = data.draw(st.integers(1, 2))
    attrs = dict(
        n_targets=n_targets, tree_roots=[0], nodes_featureids=features,
        nodes_truenodeids=trues, nodes_trueleafs=tleaf, nodes_falsenodeids=falses,
        nodes_falseleafs=fleaf,
        nodes_missing_value_tracks_true=data.draw(st.lists(st.integers(0, 1), min_size=n_nodes,
                                                           max_size=n_nodes)),
        nodes_modes=numpy_helper.from_array(np.asarray(modes, np.uint8)),
        nodes_splits=numpy_helper.from_array(np.asarray(splits, np.float32)),
        leaf_targetids=data.draw(st.lists(st.integers(0, n_targets - 1), min_size=n_leaves,
                                          max_size=n_leaves)),
        leaf_weights=numpy_helper.from_array(np.arange(1, n_leaves + 1, dtype=np.float32)),
        aggregate_function=1, post_transform=0)
    if members:
        attrs["membership_values"] = numpy_helper.from_array(np.asarray(members, np.float32))
    node = helper.make_node("TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml", **attrs)
    graph = helper.make_graph([node], "t5", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, [None, n_features])], [helper.make_tensor_value_info(
            "Y", TensorProto.FLOAT, [None, n_targets])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("ai.onnx.ml", 5)])
    rows = np.asarray(data.draw(st.lists(st.lists(st.sampled_from(GRID + [0.25, float("nan")]),
                                                  min_size=n_features, max_size=n_features),
                                         min_size=1, max_size=6)), np.float32)
    lowered = lower_onnx_ml(model)
    got = _expected(lowered, {"X": rows})["Y"]
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, {"X": rows})[0],
                               atol=ATOL)
    # ONNX Runtime 1.32 truncates x to an integer before it looks x up in a member set
    # (-1.5 is then a member of {-1}); the spec and the reference compare the float.
    members_of = sorted({f for f, m in zip(features, modes) if m == 6})
    column = rows[:, members_of].ravel()
    if np.all(np.isnan(column) | (column == np.round(column))):
        np.testing.assert_allclose(got, _expected(model, {"X": rows})["Y"], atol=ATOL)


def test_generated_ensemble_compiles_and_matches_onnxruntime(tmp_path):
    """Every mode, NaN tracks and a base value through TVM (the property tests above run
    the lowered graph in ONNX Runtime)."""
    nodes = [  # (node id, true, false, feature, mode, threshold, missing goes true)
        (0, 1, 2, 0, "BRANCH_LEQ", 0.5, 1), (1, 3, 4, 1, "BRANCH_GTE", 0.0, 0),
        (2, 5, 6, 2, "BRANCH_NEQ", 1.0, 0), (3, 7, 8, 0, "BRANCH_EQ", -0.5, 1),
        (4, 9, 10, 2, "BRANCH_GT", 0.5, 1), (5, 11, 12, 1, "BRANCH_LT", -0.5, 0),
    ]
    leaves = list(range(6, 13))
    attrs = dict(
        nodes_treeids=[0] * 13, nodes_nodeids=list(range(13)),
        nodes_truenodeids=[n[1] for n in nodes] + [0] * 7,
        nodes_falsenodeids=[n[2] for n in nodes] + [0] * 7,
        nodes_featureids=[n[3] for n in nodes] + [0] * 7,
        nodes_modes=[n[4] for n in nodes] + ["LEAF"] * 7,
        nodes_values=[n[5] for n in nodes] + [0.0] * 7,
        nodes_missing_value_tracks_true=[n[6] for n in nodes] + [0] * 7,
        target_treeids=[0] * 14, target_nodeids=leaves * 2, target_ids=[0] * 7 + [1] * 7,
        target_weights=[float(v) for v in range(1, 8)] + [float(-v) for v in range(1, 8)],
        n_targets=2, base_values=[0.5, -0.5], aggregate_function="SUM")
    node = helper.make_node("TreeEnsembleRegressor", ["X"], ["Y"], domain="ai.onnx.ml",
                            **attrs)
    graph = helper.make_graph([node], "trees", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, ["N", 3])], [helper.make_tensor_value_info(
            "Y", TensorProto.FLOAT, ["N", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    path = tmp_path / "trees.onnx"
    onnx.save(model, path)
    grid = GRID + [0.25, float("nan")]
    rows = np.asarray(np.meshgrid(grid, grid, grid)).reshape(3, -1).T.astype(np.float32)
    art = compile_model(path, "host", tmp_path / "art", input_shapes={"X": list(rows.shape)})
    _assert_matches(EdgeModel.load(art).predict({"X": rows}), _expected(path, {"X": rows}))
