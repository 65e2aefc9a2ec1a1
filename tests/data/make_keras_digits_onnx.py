"""Makes keras_digits_cnn.onnx and sklearn_digits_mlp.onnx: ONNX files written by other tools
than this project's exporter, for tests/test_onnx_source.py (the `onnx` model source).

- keras_digits_cnn.onnx: a small Keras CNN (Conv2D+BatchNorm+ReLU, MaxPool, Conv2D+BatchNorm+ReLU,
  Flatten, Dense+ReLU, Dense -> 10 logits) trained for a few seconds on scikit-learn's 8x8 digits,
  scaled exactly as the project's `digits` dataset scales them ((x / 16 - 0.3) / 0.4) and split as
  it splits them (80/20, stratified, random_state 0: the validation split stays unseen); 98.6%
  top-1 on it. Deterministic: two runs write the same bytes. Keras runs NHWC; tf2onnx's
  inputs_as_nchw makes the ONNX input N x 1 x 8 x 8, as the `digits` dataset gives it. tf2onnx writes
  each BatchNormalization as a Mul and an Add after the conv, and Flatten as a Transpose to
  channels-last plus a Reshape to (-1, 256): what the model source folds away.
- sklearn_digits_mlp.onnx: an MLPClassifier on the same flattened inputs (N x 64), exported by
  skl2onnx with zipmap off. Outputs `label` and `probabilities`: the model source picks one with
  `output`, and its MatMul + Add pairs exercise the folding into Gemm.

Made once, not at test time (the tests need neither TensorFlow nor skl2onnx), in a scratch venv:

    python3.11 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0 skl2onnx==1.20.0 scikit-learn numpy
    /tmp/tfvenv/bin/python tests/data/make_keras_digits_onnx.py

Versions used: Python 3.11.7, tensorflow-cpu 2.21.0 (Keras 3.15.1), tf2onnx 1.17.0, skl2onnx 1.20.0,
scikit-learn 1.9.1, numpy 2.4.6, onnx 1.23.2; opset 13."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OPSET = 13


def digits_like_the_project():
    """scikit-learn's digits as compressor.data.digits gives them: N x 1 x 8 x 8 float32, same split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = ((d.images.astype(np.float32) / 16.0) - 0.3) / 0.4
    x = x[:, None, :, :]
    idx_train, idx_val = train_test_split(list(range(len(d.target))), test_size=0.2, stratify=d.target, random_state=0)
    return x[idx_train], d.target[idx_train], x[idx_val], d.target[idx_val]


def keras_cnn(x_train, y_train, x_val, y_val) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(8, 3, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(16, 3, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    nhwc = lambda x: np.transpose(x, (0, 2, 3, 1))  # noqa: E731  Keras convs run channels-last on CPU
    model.fit(nhwc(x_train), y_train, epochs=40, batch_size=32, verbose=0)
    print("keras val accuracy", model.evaluate(nhwc(x_val), y_val, verbose=0)[1])

    @tf.function(input_signature=[tf.TensorSpec((None, 8, 8, 1), tf.float32, name="image")])
    def forward(image):
        return {"logits": model(image, training=False)}

    path = HERE / "keras_digits_cnn.onnx"
    proto, _ = tf2onnx.convert.from_function(forward, input_signature=forward.input_signature, opset=OPSET,
                                             inputs_as_nchw=["image"], output_path=str(path))
    print(path.name, path.stat().st_size, "bytes;", sorted({n.op_type for n in proto.graph.node}))
    return path


def sklearn_mlp(x_train, y_train, x_val, y_val) -> Path:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0).fit(flat(x_train), y_train)
    print("sklearn val accuracy", clf.score(flat(x_val), y_val))
    proto = to_onnx(clf, flat(x_train[:1]), target_opset={"": OPSET, "ai.onnx.ml": 3},
                    options={id(clf): {"zipmap": False}})
    path = HERE / "sklearn_digits_mlp.onnx"
    path.write_bytes(proto.SerializeToString())
    print(path.name, path.stat().st_size, "bytes;", sorted({n.op_type for n in proto.graph.node}))
    return path


if __name__ == "__main__":
    splits = digits_like_the_project()
    keras_cnn(*splits)
    sklearn_mlp(*splits)
