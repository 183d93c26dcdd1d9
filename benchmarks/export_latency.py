"""Latency parity: our MobileNetV2 against tf_keras.applications.MobileNetV2, as TFLite.

    python benchmarks/export_latency.py [--alpha=1.0] [--size=224] [--rounds=3] [--num_runs=30]
        [--out=benchmarks/results/export_latency.json]

Both networks get the same weights (Keras' layer names are ours; the weights are copied
layer by layer, so the graphs differ only in how they are built and exported) and the
same calibration images (Fashion-MNIST test images resized to the input size, or noise
without the dataset). Keras' model is converted by the standard recipe
(`TFLiteConverter.from_keras_model`, DEFAULT optimization + representative dataset +
TFLITE_BUILTINS_INT8 + int8 I/O); ours by `mnv2_tf.export.convert`. Each model runs in
its own LiteRT process (`mnv2_tf.bench.desktop`), at 1 and 2 threads, in `rounds`
alternating rounds so that machine noise hits both alike; the figure is the median over
all timed runs of all rounds.
"""

from __future__ import annotations

import os
import tempfile

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
import numpy as np
import tensorflow as tf
import tf_keras
from absl import app, flags

import common  # benchmarks/common.py: the script's own folder is on sys.path
from mnv2_tf import models
from mnv2_tf.bench import desktop
from mnv2_tf.data import sources
from mnv2_tf.export import convert
from mnv2_tf.models.common import DEFAULT_PREPROCESSING, preprocess_input
from mnv2_tf.tasks import Classification

_ALPHA = flags.DEFINE_float("alpha", 1.0, "Width multiplier.")
_SIZE = flags.DEFINE_integer("size", 224, "Input size.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds per (model, threads).")
_RUNS = flags.DEFINE_integer("num_runs", 30, "Timed runs per round.")
_WARMUP = flags.DEFINE_integer("warmup_runs", 5, "Warm-up runs per round.")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "Thread counts.")
_OUT = flags.DEFINE_string("out", common.results_path("export_latency"), "JSON output.")


def calibration_images(size: int, count: int = 64) -> np.ndarray:
    """Test images at `size`, normalized by the model's own preprocessing constants."""
    path = sources.FASHION_MNIST_DIR
    try:
        images = sources.read_idx(os.path.join(path, "t10k-images-idx3-ubyte.gz"))[:count]
        images = np.repeat(images[..., None], 3, axis=-1).astype(np.float32)
        images = tf.image.resize(images, (size, size)).numpy()
    except (OSError, FileNotFoundError):
        images = np.random.default_rng(0).uniform(0, 255, (count, size, size, 3))
    return preprocess_input(images, DEFAULT_PREPROCESSING).numpy()


def keras_recipe(model: tf_keras.Model, mode: str, representative) -> bytes:
    """The standard converter recipe for a Keras model (TFLite's PTQ guide)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def main(argv):
    del argv
    alpha, size = _ALPHA.value, _SIZE.value
    keras_model = tf_keras.applications.MobileNetV2(
        alpha=alpha, input_shape=(size, size, 3), weights=None
    )
    ours = models.mobilenet_v2(alpha=alpha, input_shape=(size, size, 3))
    for layer in keras_model.layers:
        if layer.weights:
            ours.get_layer(layer.name).set_weights(layer.get_weights())
    images = calibration_images(size)
    probe = images[:4]
    np.testing.assert_allclose(ours(probe), keras_model(probe), atol=1e-4)

    def representative():
        for i in range(0, len(images), 8):
            yield [images[i : i + 8]]

    folder = tempfile.mkdtemp(prefix="latency_")
    files = {}
    for mode in ("float32", "int8"):
        representative_or_none = representative if mode == "int8" else None
        contents = {
            "keras_applications": keras_recipe(keras_model, mode, representative),
            "mnv2_tf": convert.convert(
                ours,
                mode,
                DEFAULT_PREPROCESSING,
                representative=representative_or_none,
                outputs=Classification(None, 1000).serving_outputs,
            ),
        }
        for name, content in contents.items():
            path = os.path.join(folder, f"{name}_{mode}.tflite")
            with open(path, "wb") as f:
                f.write(content)
            files[(name, mode)] = path

    results = {
        "machine": common.machine(),
        "alpha": alpha,
        "input_size": size,
        "rounds": _ROUNDS.value,
        "num_runs_per_round": _RUNS.value,
        "models": {},
        "comparison": {},
    }
    for (name, mode), path in files.items():
        with open(path, "rb") as f:
            info = convert.inspect(f.read())
        results["models"][f"{name}_{mode}"] = {
            "size_bytes": info.size_bytes,
            "ops": info.ops,
            "float_ops": len(info.float_ops),
        }
    for threads in [int(t) for t in _THREADS.value]:
        for mode in ("float32", "int8"):
            runs = {"keras_applications": [], "mnv2_tf": []}
            for _ in range(_ROUNDS.value):
                for name in runs:
                    timing = desktop.measure(
                        files[(name, mode)], threads=threads,
                        warmup_runs=_WARMUP.value, num_runs=_RUNS.value,
                    )  # fmt: skip
                    runs[name].append(timing.median_us)
            keras_median = float(np.median(runs["keras_applications"]))
            ours_median = float(np.median(runs["mnv2_tf"]))
            key = f"{mode}_{threads}_threads"
            results["comparison"][key] = {
                "keras_applications_median_us": keras_median,
                "mnv2_tf_median_us": ours_median,
                "round_medians_us": runs,
                "mnv2_tf_vs_keras": ours_median / keras_median,
                "no_slower": ours_median <= keras_median * 1.0,
            }
            print(
                f"{key}: keras.applications {keras_median:.0f} us, mnv2_tf {ours_median:.0f} us "
                f"({ours_median / keras_median:.3f}x)",
                flush=True,
            )
    common.write_results(_OUT.value, results)


if __name__ == "__main__":
    app.run(main)
