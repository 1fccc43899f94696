#!/usr/bin/env python3
"""Train the neo-edge sample models: a SageMaker script-mode entry point.

One script for both places a model is trained:

- **in the cloud**, as the entry point of a SageMaker framework container (script mode):
  SageMaker copies the ``train``/``test`` channels to ``/opt/ml/input/data/<channel>``,
  sets ``SM_CHANNEL_<CHANNEL>``, ``SM_MODEL_DIR`` (``/opt/ml/model``, uploaded as
  ``model.tar.gz`` when the job ends), ``SM_OUTPUT_DATA_DIR`` and ``SM_HPS`` (the
  hyperparameters as JSON), and runs ``python train.py --n-estimators 50 ...`` with every
  hyperparameter also given as a command-line option;
- **locally**, run by ``local_mode.py`` as a subprocess with the same environment
  variables pointing at scratch folders.

Data channels: CSV files (``*.csv``, no header), the label in the first column and the
64 pixel values (4-bit grey levels, 0-16, of the 8x8 images of scikit-learn's digits
data set) in the others. ``local_mode.py`` writes them; ``write_digits_channels`` below
does the same for a data set you upload to S3.

Models written to ``SM_MODEL_DIR``:

``mlp.onnx`` (``--model mlp`` or ``both``)
    A scikit-learn ``MLPClassifier`` exported to ONNX by hand (Flatten, then Gemm + Relu
    per hidden layer, then Gemm + Softmax), input ``image`` ``[1, 1, 8, 8]`` float32 in
    ``[0, 1]`` (grey level / 16), output ``probabilities`` ``[1, 10]``. Needs the
    ``onnx`` package (not in SageMaker's XGBoost container: add it to the source
    directory's ``requirements.txt``, or use the scikit-learn container).
``xgboost.json`` (``--model xgboost`` or ``both``)
    An ``xgboost`` ``multi:softprob`` booster on the raw 64 features, in XGBoost's JSON
    format (what SageMaker Neo compiles for the ``XGBOOST`` framework).
``model_info.json``
    Label names, each model's input and preprocessing, and its accuracy on the test
    channel (or a held-out fifth of the train channel when there is none).

Test-set predictions go to ``SM_OUTPUT_DATA_DIR/predictions.json`` (SageMaker uploads
that folder as ``output.tar.gz``), so a later step can check that a compiled model agrees.

Hyperparameters (``--name value`` on the command line, or in ``SM_HPS``; ``-`` and ``_``
are interchangeable in names; the command line wins): ``model`` (``mlp``, ``xgboost`` or
``both``; default ``both``), ``hidden-units`` (``64,32``), ``max-iter`` (300), ``alpha``
(1e-4), ``n-estimators`` (40), ``max-depth`` (4), ``learning-rate`` (0.3), ``seed`` (0).

In the cloud, give a ``TrainingJob`` the container image of the SageMaker scikit-learn or
XGBoost framework and the script-mode hyperparameters ``sagemaker_program`` =
``train.py`` and ``sagemaker_submit_directory`` = the ``s3://`` URI of a ``.tar.gz`` of
this folder (that is what the SageMaker Python SDK's ``entry_point=`` does); see the
README.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

#: The class names, in output order.
LABELS = [str(d) for d in range(10)]
#: Grey levels of the digits images: 0 (background) to 16 (ink).
GREY_LEVELS = 16
#: The MLP's input: one 8x8 grey image, NCHW.
IMAGE_SHAPE = [1, 1, 8, 8]
#: What the device does to an image before the MLP (``edge_inference``'s ``preprocess``):
#: a PNG/PGM whose pixels are the 0-16 grey levels, scaled by 1/16 (exact in float32).
MLP_PREPROCESS = {"input": "image", "layout": "NCHW", "size": [8, 8],
                  "scale": 1.0 / GREY_LEVELS, "mean": [0.0], "std": [1.0]}

DEFAULTS: dict[str, Any] = {
    "model": "both", "hidden_units": "64,32", "max_iter": 300, "alpha": 1e-4,
    "n_estimators": 40, "max_depth": 4, "learning_rate": 0.3, "seed": 0,
}


# ---------------------------------------------------------------------------------------
# The script-mode contract


def _hps_from_env(env: dict) -> dict:
    """``SM_HPS`` (a JSON object) with names normalised to ``snake_case``."""
    raw = env.get("SM_HPS", "").strip()
    if not raw:
        return {}
    try:
        hps = json.loads(raw)
    except json.JSONDecodeError:
        raise SystemExit(f"SM_HPS must be a JSON object of hyperparameters; got {raw!r}") from None
    if not isinstance(hps, dict):
        raise SystemExit(f"SM_HPS must be a JSON object of hyperparameters; got {raw!r}")
    return {str(k).replace("-", "_"): v for k, v in hps.items()
            if not str(k).startswith("sagemaker_")}


def parse_args(argv: Optional[Sequence[str]] = None, env: Optional[dict] = None) -> argparse.Namespace:
    """Hyperparameters and folders, as SageMaker passes them.

    Defaults come from :data:`DEFAULTS`, then ``SM_HPS``, then the command line.
    Unknown hyperparameters (``sagemaker_program``...) are ignored.
    """
    env = dict(os.environ if env is None else env)
    defaults = {**DEFAULTS, **_hps_from_env(env)}
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    def opt(name: str, **kwargs: Any) -> None:
        dest = name.replace("-", "_")
        p.add_argument(f"--{name}", *([f"--{dest}"] if dest != name else []), dest=dest,
                       default=defaults.get(dest), **kwargs)

    opt("model", choices=["mlp", "xgboost", "both"], help="which model(s) to train")
    opt("hidden-units", help="MLP hidden layer sizes, comma-separated")
    opt("max-iter", help="MLP training epochs at most")
    opt("alpha", help="MLP L2 penalty")
    opt("n-estimators", help="XGBoost boosting rounds")
    opt("max-depth", help="XGBoost tree depth")
    opt("learning-rate", help="XGBoost learning rate (eta)")
    opt("seed", help="random seed")
    p.add_argument("--model-dir", default=env.get("SM_MODEL_DIR", "/opt/ml/model"))
    p.add_argument("--train", default=env.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    p.add_argument("--test", default=env.get("SM_CHANNEL_TEST"))
    p.add_argument("--output-data-dir", default=env.get("SM_OUTPUT_DATA_DIR"))
    args, unknown = p.parse_known_args(argv)
    if unknown:
        print(f"ignoring unknown arguments: {' '.join(unknown)}", flush=True)
    # Values arrive as strings (command line, often SM_HPS too): coerce them here, so both
    # sources get the same checks and messages.
    for name, kind in (("max_iter", int), ("n_estimators", int), ("max_depth", int),
                       ("seed", int), ("alpha", float), ("learning_rate", float),
                       ("model", str), ("hidden_units", str)):
        try:
            setattr(args, name, kind(getattr(args, name)))
        except (TypeError, ValueError):
            p.error(f"hyperparameter {name.replace('_', '-')} must be {kind.__name__}; "
                    f"got {getattr(args, name)!r}")
    if args.model not in ("mlp", "xgboost", "both"):
        p.error(f"hyperparameter model must be one of mlp, xgboost, both; got {args.model!r}")
    try:
        args.hidden = tuple(int(v) for v in str(args.hidden_units).split(",") if v.strip())
    except ValueError:
        args.hidden = ()
    if not args.hidden or min(args.hidden) < 1:
        p.error(f"hyperparameter hidden-units must be positive integers separated by commas; "
                f"got {args.hidden_units!r}")
    return args


# ---------------------------------------------------------------------------------------
# Data


def write_digits_channels(root: str | os.PathLike, *, test_fraction: float = 0.25,
                          seed: int = 0, limit: Optional[int] = None) -> dict[str, Path]:
    """Write scikit-learn's digits as ``<root>/train/digits.csv`` and ``<root>/test/digits.csv``.

    A stratified split; ``limit`` keeps only that many images (stratified too).
    Returns the channel folders.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x, y = digits.data.astype(np.int64), digits.target.astype(np.int64)
    if limit is not None and limit < len(y):
        x, _, y, _ = train_test_split(x, y, train_size=limit, stratify=y, random_state=seed)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed)
    out = {}
    for channel, (xs, ys) in (("train", (x_train, y_train)), ("test", (x_test, y_test))):
        folder = Path(root) / channel
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "digits.csv", "w", newline="") as f:
            csv.writer(f).writerows(np.column_stack([ys, xs]).tolist())
        out[channel] = folder
    return out


def read_channel(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and labels (int64) of every ``*.csv`` in a channel folder."""
    files = sorted(Path(folder).glob("*.csv"))
    if not files:
        raise SystemExit(f"channel folder {str(folder)!r} holds no .csv files; expected CSV "
                         "with the label in the first column")
    rows = [np.loadtxt(f, delimiter=",", ndmin=2) for f in files]
    data = np.concatenate(rows)
    if data.shape[1] != 65:
        raise SystemExit(f"{files[0]} has {data.shape[1]} columns; expected 65 "
                         "(the label, then 64 pixel values)")
    return data[:, 1:].astype(np.float32), data[:, 0].astype(np.int64)


# ---------------------------------------------------------------------------------------
# The MLP and its ONNX graph


def mlp_to_onnx(clf: Any, name: str = "digits-mlp"):
    """The ONNX graph of a fitted ``MLPClassifier`` (ReLU hidden layers, softmax output).

    Input ``image`` ``[1, 1, 8, 8]`` (grey levels / 16); output ``probabilities``
    ``[1, n_classes]``. Built with ``onnx.helper`` from ``coefs_`` and ``intercepts_``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if getattr(clf, "activation", None) != "relu" or getattr(clf, "out_activation_", None) != "softmax":
        raise ValueError(f"only relu MLPs with a softmax output are exported; got activation "
                         f"{getattr(clf, 'activation', None)!r}, output "
                         f"{getattr(clf, 'out_activation_', None)!r}")
    nodes = [helper.make_node("Flatten", ["image"], ["x0"], axis=1)]
    inits = []
    last = len(clf.coefs_) - 1
    x = "x0"
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), f"W{i}"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"B{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"B{i}"], [f"z{i}"]))
        x = f"z{i}"
        if i < last:
            nodes.append(helper.make_node("Relu", [x], [f"h{i}"]))
            x = f"h{i}"
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=-1))
    n_classes = int(clf.coefs_[-1].shape[1])
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, IMAGE_SHAPE)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, n_classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="neo-edge-training")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def onnx_forward(model: Any, images: np.ndarray) -> np.ndarray:
    """Run an exported MLP graph with numpy (float32), one row per image: a check of the export."""
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = images.reshape(len(images), -1).astype(np.float32)
    n = sum(1 for k in weights if k.startswith("W"))
    for i in range(n):
        x = x @ weights[f"W{i}"] + weights[f"B{i}"]
        if i < n - 1:
            x = np.maximum(x, 0)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------
# Training


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(pred == y))


def train_mlp(args: argparse.Namespace, x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
              y_test: np.ndarray, model_dir: Path) -> tuple[dict, list[int]]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=args.hidden, alpha=args.alpha, max_iter=args.max_iter,
                        random_state=args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x / GREY_LEVELS, y)
    pred = clf.predict(x_test / GREY_LEVELS)
    model = mlp_to_onnx(clf)
    # The export must predict what scikit-learn predicts, or the accuracy below is not the
    # ONNX model's.
    exported = np.argmax(onnx_forward(model, x_test / GREY_LEVELS), axis=1)
    if not np.array_equal(exported, pred):
        raise SystemExit(f"the ONNX export disagrees with scikit-learn on "
                         f"{int(np.sum(exported != pred))} of {len(pred)} test images")
    (model_dir / "mlp.onnx").write_bytes(model.SerializeToString())
    info = {"file": "mlp.onnx", "framework": "ONNX", "kind": "MLPClassifier",
            "hidden_units": list(args.hidden), "iterations": int(clf.n_iter_),
            "input": {"name": "image", "shape": IMAGE_SHAPE, "dtype": "float32"},
            "preprocess": MLP_PREPROCESS, "accuracy": _accuracy(pred, y_test)}
    return info, [int(p) for p in pred]


def train_xgboost(args: argparse.Namespace, x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, model_dir: Path) -> tuple[dict, list[int]]:
    import xgboost as xgb

    clf = xgb.XGBClassifier(n_estimators=args.n_estimators, max_depth=args.max_depth,
                            learning_rate=args.learning_rate, objective="multi:softprob",
                            tree_method="hist", random_state=args.seed, n_jobs=1)
    clf.fit(x, y)
    pred = clf.predict(x_test)
    clf.get_booster().save_model(str(model_dir / "xgboost.json"))
    info = {"file": "xgboost.json", "framework": "XGBOOST", "kind": "XGBClassifier",
            "n_estimators": args.n_estimators, "max_depth": args.max_depth,
            "input": {"name": "input", "shape": [1, int(x.shape[1])], "dtype": "float32"},
            "preprocess": None, "accuracy": _accuracy(np.asarray(pred), y_test)}
    return info, [int(p) for p in pred]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    model_dir = Path(args.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    x, y = read_channel(args.train)
    if args.test:
        x_test, y_test = read_channel(args.test)
        evaluated_on = "test"
    else:  # no test channel: hold out a fifth of the train channel
        from sklearn.model_selection import train_test_split

        x, x_test, y, y_test = train_test_split(x, y, test_size=0.2, stratify=y,
                                                random_state=args.seed)
        evaluated_on = "train holdout"
    print(f"train: {len(y)} images, {evaluated_on}: {len(y_test)} images", flush=True)

    models: dict[str, dict] = {}
    predictions: dict[str, list[int]] = {"labels": [int(v) for v in y_test]}
    for kind, fn in (("mlp", train_mlp), ("xgboost", train_xgboost)):
        if args.model not in (kind, "both"):
            continue
        t0 = time.perf_counter()
        info, pred = fn(args, x, y, x_test, y_test, model_dir)
        info["train_seconds"] = round(time.perf_counter() - t0, 3)
        models[kind] = info
        predictions[kind] = pred
        # One line per metric in a form a SageMaker metric definition's regex can read.
        print(f"{kind}: test_accuracy={info['accuracy']:.6f} "
              f"train_seconds={info['train_seconds']:.2f}", flush=True)

    model_info = {"dataset": "scikit-learn digits (8x8 grey images, 16 grey levels)",
                  "labels": LABELS, "evaluated_on": evaluated_on,
                  "test_size": int(len(y_test)), "models": models}
    (model_dir / "model_info.json").write_text(json.dumps(model_info, indent=2) + "\n")
    out = Path(args.output_data_dir) if args.output_data_dir else model_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(predictions) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
