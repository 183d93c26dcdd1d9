"""Fashion-MNIST quality and training speed of configs/fashion_mnist.py on this machine.

    python benchmarks/fashion_mnist.py [--out=benchmarks/results/fashion_mnist.json]
        [--skip_quality] [--skip_speed] [--speed_steps=60] [--epochs=N]

Speed (side by side, in one process order): images/s of
  - the input pipeline alone (batches drawn as fast as they come);
  - `tf_keras.applications.MobileNetV2` trained by plain `model.fit` on the same pipeline;
  - our trainer on the identical network (Keras' architecture: the paper's strides);
  - our trainer on the config's own network.
Training speeds are the second epoch of `speed_steps` steps (the first pays for tracing).

Quality: the config trained in full into a fresh workdir; per-epoch top-1 on the 10,000
test images with wall time, the final top-1, and when (if) 94.0% was first reached.
`--epochs` overrides the config's epoch count (the cosine schedule stretches with it), to
measure where a longer budget gets.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
import tf_keras
from absl import app, flags

import common  # benchmarks/common.py: the script's own folder is on sys.path
from mnv2_tf import config as config_lib
from mnv2_tf.data import make_dataset
from mnv2_tf.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OUT = flags.DEFINE_string("out", common.results_path("fashion_mnist"), "JSON output.")
_SKIP_QUALITY = flags.DEFINE_bool("skip_quality", False, "Only the speed comparison.")
_SKIP_SPEED = flags.DEFINE_bool("skip_speed", False, "Only the full training run.")
_SPEED_STEPS = flags.DEFINE_integer("speed_steps", 60, "Steps per timed epoch.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Epochs of the quality run (default: the config's).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of the full run (default: a temp dir).")
TARGET = 0.94


def load_config():
    """configs/fashion_mnist.py, with `--epochs` applied."""
    config = config_lib.load_file(os.path.join(ROOT, "configs", "fashion_mnist.py"))
    if _EPOCHS.value:
        config.train.epochs = _EPOCHS.value
    return config


def pipeline_speed(config, batches: int = 300) -> float:
    ds, _ = make_dataset(
        config.data, config_lib.preprocessing_of(config), "train", training=True,
        batch_size=config.train.batch_size,
    )  # fmt: skip
    iterator = iter(ds)
    for _ in range(20):
        next(iterator)
    start = time.time()
    for _ in range(batches):
        next(iterator)
    return batches * config.train.batch_size / (time.time() - start)


def keras_fit_speed(config, steps: int) -> float:
    """keras.applications.MobileNetV2 + model.fit, same alpha, input, batch and data."""
    tf_keras.backend.clear_session()
    size = config.model.input_size
    model = tf_keras.applications.MobileNetV2(
        alpha=config.model.alpha, input_shape=(size, size, 3), weights=None, classes=10
    )
    model.compile(
        optimizer=tf_keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
        loss="sparse_categorical_crossentropy",
    )
    ds, _ = make_dataset(
        config.data, config_lib.preprocessing_of(config), "train", training=True,
        batch_size=config.train.batch_size,
    )  # fmt: skip
    ds = ds.map(lambda ex: (ex["image"], ex["label"]))
    times = []

    class Timer(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.time() - self.start)

    model.fit(ds, epochs=2, steps_per_epoch=steps, verbose=0, callbacks=[Timer()])
    return steps * config.train.batch_size / times[-1]


def trainer_speed(config, steps: int, keras_architecture: bool) -> float:
    """Our trainer's images/s on the config's network or on Keras' (paper strides)."""
    tf_keras.backend.clear_session()
    with config.unlocked():
        if keras_architecture:
            config.model.remove_early_strides = 0
            config.model.output_stride = None
        config.train.epochs = 2
        config.train.steps_per_epoch = steps
        config.train.save_saved_model = False
        config.data.max_eval_examples = 256
    with tempfile.TemporaryDirectory() as workdir:
        history = trainer.train(config, workdir)
    return history[-1]["images_per_sec"]


def main(argv):
    del argv
    results = {
        "machine": common.machine(),
        "config": load_config().to_dict(),
    }
    if not _SKIP_SPEED.value:
        steps = _SPEED_STEPS.value
        speed = {"steps_per_timed_epoch": steps}
        speed["pipeline_images_per_sec"] = pipeline_speed(load_config())
        speed["keras_fit_images_per_sec"] = keras_fit_speed(load_config(), steps)
        speed["ours_same_network_images_per_sec"] = trainer_speed(load_config(), steps, True)
        speed["ours_config_network_images_per_sec"] = trainer_speed(load_config(), steps, False)
        speed["ours_vs_keras_fit"] = (
            speed["ours_same_network_images_per_sec"] / speed["keras_fit_images_per_sec"]
        )
        speed["pipeline_vs_config_training"] = (
            speed["pipeline_images_per_sec"] / speed["ours_config_network_images_per_sec"]
        )
        results["speed"] = speed
        print(json.dumps(speed, indent=2), flush=True)
    if not _SKIP_QUALITY.value:
        tf_keras.backend.clear_session()
        workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="fmnist_")
        start = time.time()
        history = trainer.train(load_config(), workdir)
        reached = next((m for m in history if m["eval_top1"] >= TARGET), None)
        results["quality"] = {
            "workdir": workdir,
            "wall_time_s": time.time() - start,
            "final_top1": history[-1]["eval_top1"],
            "best_top1": max(m["eval_top1"] for m in history),
            "eval_examples": history[-1]["eval_examples"],
            "target_top1": TARGET,
            "target_reached_at_epoch": reached["epoch"] if reached else None,
            "target_reached_at_wall_time_s": reached["wall_time_s"] if reached else None,
            "epochs": [
                {
                    k: m[k]
                    for k in (
                        "epoch",
                        "eval_top1",
                        "train_loss",
                        "eval_loss",
                        "images_per_sec",
                        "wall_time_s",
                    )
                }
                for m in history
            ],
        }
        print(json.dumps(results["quality"], indent=2), flush=True)
    common.write_results(_OUT.value, results)


if __name__ == "__main__":
    app.run(main)
