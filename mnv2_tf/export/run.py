"""A training workdir, read back for export: its config, task, labels and float model.

Everything export needs was written by the trainer: `config.json` (the architecture, the
preprocessing constants, the data source), `labels.txt`, and either the finished models
(`final/model.h5`, `best/model.h5`) or, for an interrupted run, the latest checkpoint,
whose EMA weights are the ones evaluation used. Nothing is asked twice.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import tensorflow as tf
import tf_keras
from absl import logging

from mnv2_tf import config as config_lib
from mnv2_tf import fileio, tasks
from mnv2_tf.errors import UserError
from mnv2_tf.models.common import Preprocessing
from mnv2_tf.train import precise_bn
from mnv2_tf.train.ema import EMA

WEIGHTS_CHOICES = ("final", "best", "checkpoint")


@dataclasses.dataclass
class Run:
    """A trained run, ready to convert."""

    workdir: str
    config: ml_collections.ConfigDict
    num_classes: int
    class_names: list[str]
    preprocessing: Preprocessing
    task: tasks.Task
    model: tf_keras.Model  # the task's float32 inference model, with the weights export uses
    weights_from: str  # the file or checkpoint the weights came from


def read(workdir: str) -> Run:
    """The run in `workdir` as its config.json describes it (config, classes,
    preprocessing, task), without a model."""
    if not tf.io.gfile.isdir(workdir):
        raise UserError(f"workdir {workdir} does not exist; pass the --workdir train.py wrote")
    config, extras = config_lib.load_saved(workdir)
    class_names = list(extras.get("dataset", {}).get("class_names") or [])
    num_classes = config.model.num_classes or len(class_names)
    if not num_classes:
        raise UserError(f"{workdir}/config.json names no classes; re-run train.py on it")
    if not class_names:
        class_names = [str(i) for i in range(num_classes)]
    preprocessing = (
        Preprocessing(**extras["preprocessing"])
        if "preprocessing" in extras
        else (config_lib.preprocessing_of(config))
    )
    task = tasks.get(config, num_classes, class_names)
    return Run(workdir, config, num_classes, class_names, preprocessing, task, None, "")  # type: ignore[arg-type]


def load(workdir: str, weights: str = "final") -> Run:
    """Reads the run in `workdir`.

    Args:
      workdir: a training workdir.
      weights: "final" (the finished run's model, or the latest checkpoint if training
        did not finish), "best" (the epoch with the task's best eval metric) or "checkpoint"
        (the latest checkpoint's EMA weights, or its raw weights without EMA, with BN
        statistics re-estimated as the trainer does).
    """
    if weights not in WEIGHTS_CHOICES:
        raise UserError(f"unknown --weights={weights}; choose one of {', '.join(WEIGHTS_CHOICES)}")
    run = read(workdir)
    config = run.config
    model = run.task.build_inference_model()

    h5 = {"final": "final/model.h5", "best": "best/model.h5"}.get(weights)
    if h5 and tf.io.gfile.exists(os.path.join(workdir, h5)):
        path = os.path.join(workdir, h5)
        try:
            model.load_weights(fileio.local_copy(path))
        except (ValueError, OSError) as e:
            raise UserError(
                f"{path} does not fit the {config.model.name} that config.json describes "
                f"({str(e).splitlines()[0][:160]}); export the workdir with its own config.json"
            ) from e
        run.weights_from = path
    elif weights == "best":
        raise UserError(f"{workdir} has no best/model.h5; use --weights=final or checkpoint")
    else:
        run.weights_from = _restore_checkpoint(model, workdir, config)
        _precise_bn(run, model)
    run.model = model
    return run


def _precise_bn(run: Run, model: tf_keras.Model) -> None:
    """A checkpoint's EMA weights with BN statistics re-estimated as the trainer does before
    it saves a model (`mnv2_tf.train.precise_bn`), on the same images."""
    try:
        source = run.task.load_source(run.config.data, run.config.data.train_split)
    except UserError as e:
        logging.warning("BN statistics of the checkpoint kept as saved (%s)", e)
        return
    batches = precise_bn.dataset(run.task, run.preprocessing, source, run.config.train.batch_size)
    if batches is not None:
        precise_bn.update(model, batches, tf.distribute.get_strategy())


def _restore_checkpoint(model: tf_keras.Model, workdir: str, config) -> str:
    directory = os.path.join(workdir, "checkpoints")
    latest = tf.train.latest_checkpoint(directory)
    if latest is None:
        raise UserError(
            f"{workdir} holds no checkpoint (no final/model.h5, nothing in checkpoints/); "
            "train it first: python train.py --config=... --workdir=" + workdir
        )
    _check_checkpoint_shapes(model, latest, config)
    ema = EMA(model, config.train.ema_decay) if config.train.ema_decay else None
    checkpoint = tf.train.Checkpoint(model=model, **({"ema": ema} if ema else {}))
    try:
        status = checkpoint.restore(latest)
        status.expect_partial()  # the optimizer and step are not needed
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise UserError(
            f"checkpoint {latest} does not fit the {config.model.name} that config.json "
            f"describes ({str(e).splitlines()[0][:160]}); export it with its own config.json"
        ) from e
    if ema is not None:
        ema.copy_to_model()
    return latest


def _check_checkpoint_shapes(model: tf_keras.Model, path: str, config) -> None:
    """The model's variable shapes against the checkpoint's, before restoring anything (a
    failed restore leaves TensorFlow warnings behind at exit)."""
    shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    saved = sorted(
        tuple(shape)
        for key, shape in shapes.items()
        if key.startswith("model/")
        and key.endswith("/.ATTRIBUTES/VARIABLE_VALUE")
        and ".OPTIMIZER_SLOT" not in key
    )
    wanted = sorted(tuple(w.shape) for w in model.weights)
    if saved != wanted:
        difference = sorted(set(saved) ^ set(wanted))[:3]
        raise UserError(
            f"checkpoint {path} does not fit the {config.model.name} that config.json "
            f"describes (variable shapes differ, e.g. {difference}); export it with its own "
            "config.json"
        )
