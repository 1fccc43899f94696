"""Write a small Keras CNN in the three forms TensorFlow users ship, with TensorFlow's
own outputs for one input: what ``neo-edge compile`` reads through tf2onnx.

    python scripts/make_tf_models.py OUT_DIR

writes ``OUT_DIR/model.keras`` (Keras 3), ``OUT_DIR/saved_model/`` (``model.export``),
``OUT_DIR/model.tflite`` (``TFLiteConverter``), ``OUT_DIR/input.npy`` and
``OUT_DIR/expected.npz`` (``keras``: the Keras model's prediction, ``tflite``: the TFLite
interpreter's). Needs the ``tensorflow`` extra; weights are Keras' initializers under
``keras.utils.set_random_seed(0)``, batch norm statistics set away from identity.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def build(keras):
    """NHWC 24x24x3 image to 5 classes: conv, batch norm, ReLU6, depthwise conv, max
    pool, a residual add, global average pool, dense softmax."""
    layers = keras.layers
    x = inp = keras.Input((24, 24, 3), batch_size=1, name="image")
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    y = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    y = layers.Conv2D(16, 1)(y)
    x = layers.Add()([x, y])
    x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(5, activation="softmax", name="scores")(x)
    return keras.Model(inp, out, name="tiny_keras_cnn")


def main(out_dir: str) -> int:
    import keras
    import numpy as np
    import tensorflow as tf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    model = build(keras)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-looking batch norm statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(0.1 * rng.standard_normal(n).astype("float32"))
            layer.moving_variance.assign((1 + 0.2 * rng.random(n)).astype("float32"))
    x = rng.standard_normal((1, 24, 24, 3)).astype("float32")
    np.save(out / "input.npy", x)
    model.save(out / "model.keras")
    model.export(str(out / "saved_model"), verbose=False)
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    (out / "model.tflite").write_bytes(tflite)
    interpreter = tf.lite.Interpreter(model_content=tflite)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    np.savez(out / "expected.npz", keras=model.predict(x, verbose=0),
             tflite=interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
