"""TensorFlow, TFLite and Keras models through tf2onnx: files written by TensorFlow itself
(scripts/make_tf_models.py, in a child process), compiled, and compared with
TensorFlow's own outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neo_edge_runtime import CompileError, EdgeModel, compile_model
from neo_edge_runtime.compile import compiler, tf_convert

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory):
    if tf_convert.missing_modules():
        pytest.skip(f"the tensorflow extra is not installed: {tf_convert.TENSORFLOW_EXTRA}")
    out = tmp_path_factory.mktemp("tf")
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "make_tf_models.py"),
                           str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


# The SavedModel's batch dimension is dynamic (Keras' export), the TFLite model's static.
@pytest.mark.parametrize("source, framework, shapes, reference", [
    ("saved_model", "TENSORFLOW", {"image": [1, 24, 24, 3]}, "keras"),
    ("model.keras", "KERAS", {"image": [1, 24, 24, 3]}, "keras"),
    ("model.tflite", "TFLITE", None, "tflite"),
])
def test_tensorflow_models_compile_and_match_tensorflow(tf_models, tmp_path, source, framework,
                                                        shapes, reference):
    art = compile_model(tf_models / source, "host", tmp_path / "art", input_shapes=shapes)
    model = EdgeModel.load(art)
    assert model.manifest["framework"] == framework
    x = np.load(tf_models / "input.npy")
    (got,) = model.predict(x).values()
    np.testing.assert_allclose(got, np.load(tf_models / "expected.npz")[reference],
                               rtol=0, atol=1e-5)


def test_a_dynamic_batch_from_tf2onnx_names_the_input_to_fix(tf_models, tmp_path):
    with pytest.raises(CompileError, match=r"input 'image' has a dynamic shape .*"
                                           r"--input-shape image=1,24,24,3"):
        compile_model(tf_models / "saved_model", "host", tmp_path / "art")
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("name, body", [("model.tflite", b"TFL3"), ("model.keras", b"x"),
                                        ("model.h5", b"x")])
def test_fails_naming_the_extra_when_tf2onnx_is_not_installed(monkeypatch, tmp_path, name, body):
    monkeypatch.setattr(tf_convert.importlib.util, "find_spec",
                        lambda module, *a: None if module in ("tensorflow", "tf2onnx") else 1)
    (tmp_path / name).write_bytes(body)
    with pytest.raises(CompileError, match=r"converts them to ONNX with tf2onnx, which is not "
                                           r"installed \(no module tensorflow, tf2onnx\): "
                                           r"pip install 'neo-edge\[tensorflow\]' "
                                           r"\(tensorflow-cpu==2\.21\.0, tf2onnx==1\.17\.0\)"):
        compile_model(tmp_path / name, "host", tmp_path / "art")


def test_the_extra_pins_are_the_ones_the_message_names():
    import tomllib

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert sorted(extras["tensorflow"]) == ["tensorflow-cpu==2.21.0", "tf2onnx==1.17.0"]
    for pin in extras["tensorflow"]:
        assert pin in tf_convert.TENSORFLOW_EXTRA


def test_fails_when_the_file_is_not_a_tflite_model(tf_models, tmp_path):
    (tmp_path / "broken.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(CompileError, match=r"^broken\.tflite: tf2onnx's conversion to ONNX "
                                           r"failed: "):
        compile_model(tmp_path / "broken.tflite", "host", tmp_path / "art")


def test_a_frozen_graph_gets_the_tf2onnx_command_for_it(tf_models, tmp_path):
    (tmp_path / "frozen.pb").write_bytes(b"x")
    with pytest.raises(CompileError, match=r"'frozen\.pb' is not a SavedModel folder .*"
                                           r"tf2onnx\.convert --graphdef"):
        compile_model(tmp_path / "frozen.pb", "host", tmp_path / "art")


def test_mxnet_stays_an_export_hint(tmp_path):
    (tmp_path / "model.params").write_bytes(b"x")
    with pytest.raises(CompileError, match=r"does not read MXNET models: export it to ONNX "
                                           r"with mxnet\.onnx\.export_model"):
        compile_model(tmp_path / "model.params", "host", tmp_path / "art")
    assert compiler.detect_framework(tmp_path / "model.params") == "MXNET"
