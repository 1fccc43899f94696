"""TensorFlow SavedModels, TFLite flatbuffers and Keras files to ONNX, through tf2onnx.

The ``tensorflow`` extra (``pip install 'neo-edge[tensorflow]'``: tensorflow-cpu and
tf2onnx at exact pins) provides the converter; :func:`to_onnx` runs it in a child
process of the same interpreter, so TensorFlow (a gigabyte of memory, its own LLVM)
never loads into the compiler's process. Keras 3 files (``.keras``, ``.h5``) are
exported to a SavedModel first (``model.export``): tf2onnx's ``from_keras`` does not
read Keras 3 models.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from ..errors import CompileError

#: How to install the converter, as error messages say it.
TENSORFLOW_EXTRA = ("pip install 'neo-edge[tensorflow]' (tensorflow-cpu==2.21.0, "
                    "tf2onnx==1.17.0)")
#: The ONNX opset the converted models use (the corpus and the zoo use it too).
OPSET = 17

_KERAS_TO_SAVED_MODEL = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
keras.models.load_model(sys.argv[1], compile=False).export(sys.argv[2], verbose=False)
"""


def missing_modules() -> list[str]:
    """The converter's modules this interpreter lacks (``tensorflow``, ``tf2onnx``)."""
    return [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]


def _run(cmd: list, what: str, name: str) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise CompileError(f"{name}: {what} failed: " + " / ".join(lines[-3:]))


def to_onnx(path: str | os.PathLike, framework: str, out_dir: str | os.PathLike) -> Path:
    """Convert the model at ``path`` (``framework``: TENSORFLOW for a SavedModel folder,
    TFLITE, KERAS) to ``<out_dir>/model.onnx`` with tf2onnx; returns that path.

    Raises :class:`CompileError` naming the extra to install where the converter is
    missing, the model's problem where it fails.
    """
    src, out = Path(path), Path(out_dir)
    missing = missing_modules()
    if missing:
        raise CompileError(f"compiling {framework} models converts them to ONNX with tf2onnx, "
                           f"which is not installed (no module {', '.join(missing)}): "
                           f"{TENSORFLOW_EXTRA}")
    out.mkdir(parents=True, exist_ok=True)
    if framework == "KERAS":
        saved = out / "saved_model"
        _run([sys.executable, "-c", _KERAS_TO_SAVED_MODEL, str(src), str(saved)],
             "exporting the Keras model to a SavedModel", src.name)
        src, framework = saved, "TENSORFLOW"
    if framework == "TENSORFLOW":
        if src.is_file() and src.name == "saved_model.pb":
            src = src.parent
        if not (src.is_dir() and (src / "saved_model.pb").exists()):
            raise CompileError(
                f"{src.name!r} is not a SavedModel folder (one with saved_model.pb); a frozen "
                "graph .pb needs its input and output names: python -m tf2onnx.convert "
                "--graphdef model.pb --inputs x:0 --outputs y:0 --output model.onnx")
        source = ["--saved-model", str(src)]
    elif framework == "TFLITE":
        source = ["--tflite", str(src)]
    else:
        raise CompileError(f"tf2onnx does not read {framework} models")
    onnx_path = out / "model.onnx"
    _run([sys.executable, "-m", "tf2onnx.convert", *source, "--output", str(onnx_path),
          "--opset", str(OPSET)], "tf2onnx's conversion to ONNX", Path(path).name)
    return onnx_path
