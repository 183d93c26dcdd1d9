"""The training loop: from a config and a workdir to checkpoints, models and metrics.

Reads top to bottom: data -> model -> optimizer/EMA/checkpoint -> resume -> epochs of
(train steps, evaluation with the EMA weights, metrics, checkpoint, best model) -> outputs.
Running it again on the same workdir resumes from the last checkpoint with the optimizer,
EMA, step and epoch restored; checkpoints are complete-or-absent (TensorFlow writes the
`checkpoint` index file last and atomically), and JSON outputs are written to a temporary
name and renamed.

Workdir layout:
  config.json          the resolved config (+ dataset facts, preprocessing, strategy)
  labels.txt           one class name per line, in label order
  metrics.json         one object per completed epoch
  checkpoints/         tf.train.Checkpoint: model, optimizer, EMA, step
  best/, final/        model.h5 (EMA weights, softmax head) and, at the end, saved_model/
  tb/                  TensorBoard logs
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time

import ml_collections
import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from mnv2_tf import models
from mnv2_tf.data import make_dataset, sources
from mnv2_tf.errors import UserError
from mnv2_tf.models import weights as weights_lib
from mnv2_tf.train import config as config_lib
from mnv2_tf.train import distribute, optim
from mnv2_tf.train.ema import EMA

# --- small file helpers (work on local paths, Drive mounts and gs:// alike) ---------------


def write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def write_json_atomic(path: str, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def read_json(path: str, default=None):
    if not tf.io.gfile.exists(path):
        return default
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def save_h5_atomic(model: tf_keras.Model, path: str) -> None:
    """Keras writes HDF5 through h5py (local files only): write locally, then move."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.h5")
        model.save(local, include_optimizer=False)
        tf.io.gfile.copy(local, f"{path}.tmp", overwrite=True)
    tf.io.gfile.rename(f"{path}.tmp", path, overwrite=True)


# --- pieces of the run --------------------------------------------------------------------


@dataclasses.dataclass
class EpochMetrics:
    epoch: int
    step: int
    train_loss: float
    train_top1: float
    eval_loss: float
    eval_top1: float
    eval_examples: int
    images_per_sec: float
    train_time_s: float
    wall_time_s: float
    learning_rate: float
    skipped_images: int


def _check_workdir_matches(workdir: str, resolved: dict) -> None:
    """A workdir with checkpoints of another architecture cannot be resumed."""
    saved = read_json(os.path.join(workdir, "config.json"))
    if saved is None or not tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")):
        return
    differences = [
        f"model.{k}: {saved['model'].get(k)!r} there, {resolved['model'].get(k)!r} now"
        for k in config_lib.ARCHITECTURE_FIELDS
        if saved["model"].get(k) != resolved["model"].get(k)
    ]
    if differences:
        raise UserError(
            f"workdir {workdir} holds a checkpoint of another model ({'; '.join(differences)}); "
            "use a new --workdir, or the config it was trained with"
        )


def _init_from(model: tf_keras.Model, source: str) -> None:
    """Initializes from Keras ImageNet weights or another run's workdir, replacing a head
    whose number of classes differs."""
    if tf.io.gfile.isdir(source):
        for candidate in ("best/model.h5", "final/model.h5"):
            path = os.path.join(source, candidate)
            if tf.io.gfile.exists(path):
                source = path
                break
        else:
            raise UserError(f"model.init_from: no best/model.h5 or final/model.h5 in {source}")
    report = models.load_imagenet_weights(model, source)
    logging.info(
        "initialized %d layers from %s%s",
        len(report.loaded),
        report.path,
        f" (new head: {report.skipped_head})" if report.skipped_head else "",
    )


def _set_backbone_trainable(model: tf_keras.Model, trainable: bool) -> None:
    for layer in model.layers:
        if layer.name not in weights_lib.HEAD_LAYERS:
            layer.trainable = trainable


def inference_model(weights: list[np.ndarray], model_cfg, num_classes: int) -> tf_keras.Model:
    """The deployable model: the trained layers with a softmax head, float32, `weights`."""
    with tf.distribute.get_strategy().scope():
        policy = tf_keras.mixed_precision.global_policy()
        tf_keras.mixed_precision.set_global_policy("float32")
        try:
            model = config_lib.build_model(model_cfg, num_classes, classifier_activation="softmax")
        finally:
            tf_keras.mixed_precision.set_global_policy(policy)
    model.set_weights(weights)
    return model


def export_weights(model: tf_keras.Model, ema: EMA | None) -> list[np.ndarray]:
    """The weights evaluation and export use (EMA's where there is one).

    Reading distributed batch-norm statistics is a collective operation: under a
    multi-worker strategy every worker must call this, in the same order.
    """
    with ema.swapped() if ema is not None else contextlib.nullcontext():
        return [np.asarray(w) for w in model.get_weights()]


class _Progress:
    """Keras' progress bar on a terminal; one line per epoch otherwise."""

    def __init__(self, steps: int, epoch: int, epochs: int):
        self.tty = sys.stdout.isatty()
        self.bar = (
            tf_keras.utils.Progbar(steps, stateful_metrics=["loss", "top1"]) if self.tty else None
        )
        if self.tty:
            print(f"Epoch {epoch}/{epochs}")

    def update(self, step_in_epoch: int, loss: float, top1: float) -> None:
        if self.bar is not None:
            self.bar.update(step_in_epoch, [("loss", loss), ("top1", top1)])


def train(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Trains (or resumes) the run in `workdir`; returns the metrics of every epoch."""
    train_cfg, data_cfg, model_cfg = config.train, config.data, config.model
    distribute.split_cpu(train_cfg.logical_cpu_devices)
    strategy = distribute.get_strategy(train_cfg.strategy)
    chief = distribute.is_chief(strategy)
    policy = distribute.set_mixed_precision(train_cfg.mixed_precision, strategy)
    tf_keras.utils.set_random_seed(train_cfg.seed)
    # Non-chief workers of a cluster write their (identical) checkpoints to a scratch folder.
    outdir = (
        workdir if chief else os.path.join(workdir, f".worker_{strategy.cluster_resolver.task_id}")
    )
    tf.io.gfile.makedirs(outdir)

    # Data.
    preprocessing = config_lib.preprocessing_of(config)
    batch = train_cfg.batch_size
    if batch % strategy.num_replicas_in_sync:
        raise UserError(
            f"train.batch_size {batch} does not divide over {strategy.num_replicas_in_sync} replicas"
        )
    train_source = sources.load(data_cfg, data_cfg.train_split)
    eval_source = sources.load(data_cfg, data_cfg.eval_split)
    num_classes = model_cfg.num_classes or len(train_source.class_names)
    train_ds, _ = make_dataset(
        data_cfg, preprocessing, data_cfg.train_split, training=True, batch_size=batch,
        seed=train_cfg.seed, source=train_source,
    )  # fmt: skip
    eval_ds, _ = make_dataset(
        data_cfg, preprocessing, data_cfg.eval_split, training=False, batch_size=batch,
        source=eval_source,
    )  # fmt: skip
    steps_per_epoch = train_cfg.steps_per_epoch or train_source.num_examples // batch
    if steps_per_epoch < 1:
        raise UserError(
            f"{train_source.num_examples} training images make no batch of {batch}; "
            "lower train.batch_size"
        )
    skipped = len(train_source.skipped) + len(eval_source.skipped)

    resolved = config.to_dict()
    resolved["model"]["num_classes"] = num_classes
    resolved["preprocessing"] = preprocessing.to_dict()
    resolved["dataset"] = {
        "train_examples": train_source.num_examples,
        "eval_examples": eval_source.num_examples,
        "class_names": train_source.class_names,
        "skipped_images": train_source.skipped + eval_source.skipped,
    }
    resolved["runtime"] = {
        "strategy": distribute.strategy_name(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "mixed_precision": policy,
        "steps_per_epoch": steps_per_epoch,
    }
    _check_workdir_matches(workdir, resolved)
    if chief:
        write_json_atomic(os.path.join(workdir, "config.json"), resolved)
        write_text_atomic(
            os.path.join(workdir, "labels.txt"), "\n".join(train_source.class_names) + "\n"
        )

    # Model, optimizer, EMA, checkpoint.
    with strategy.scope():
        model = config_lib.build_model(model_cfg, num_classes, classifier_activation=None)
        schedule = optim.make_schedule(train_cfg, steps_per_epoch)
        optimizer = optim.make_optimizer(train_cfg, schedule)
        # Slots exist before any tf.function traces (the frozen-backbone phase updates
        # fewer variables than the rest, and tf.function cannot create variables twice).
        optimizer.build(model.trainable_variables)
        if policy == "mixed_float16":
            optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
        ema = EMA(model, train_cfg.ema_decay) if train_cfg.ema_decay else None
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    kernels = optim.decayed_kernels(model) if train_cfg.optimizer != "adamw" else []
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, step=step, **({"ema": ema} if ema else {})
    )
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(outdir, "checkpoints"), max_to_keep=train_cfg.keep_checkpoints
    )
    if manager.latest_checkpoint:
        try:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise UserError(
                f"cannot restore {manager.latest_checkpoint} into this model "
                f"({str(e).splitlines()[0][:200]}); use a new --workdir"
            ) from e
        print(f"resumed from {manager.latest_checkpoint} at step {int(step.numpy())}", flush=True)
    elif model_cfg.init_from:
        _init_from(model, model_cfg.init_from)
        if ema is not None:
            for shadow, weight in zip(ema.shadows, model.weights, strict=True):
                shadow.assign(weight)

    metrics_path = os.path.join(workdir, "metrics.json")
    start_step = int(step.numpy())
    start_epoch = start_step // steps_per_epoch
    # Epochs after the checkpoint (killed between metrics and checkpoint) are done again.
    history = [m for m in (read_json(metrics_path, []) or []) if m["epoch"] <= start_epoch]
    best_top1 = max((m["eval_top1"] for m in history), default=-1.0)

    # Compiled steps.
    label_smoothing = train_cfg.label_smoothing
    global_batch = batch

    def make_train_loop(variables):
        """A compiled loop of `num_steps` steps that updates `variables` (all trainable
        ones, or the head's while the backbone is frozen)."""

        def train_step(inputs):
            return _train_step(inputs, variables)

        @tf.function
        def loop(iterator, num_steps):
            loss_sum, top1_sum = tf.constant(0.0), tf.constant(0.0)
            for _ in tf.range(num_steps):
                loss, top1 = strategy.run(train_step, args=(next(iterator),))
                loss_sum += strategy.reduce("SUM", loss, axis=None)
                top1_sum += strategy.reduce("SUM", top1, axis=None)
                step.assign_add(1)
                if ema is not None:
                    ema.update(step)
            n = tf.cast(num_steps, tf.float32)
            return loss_sum / n, top1_sum / n

        return loop

    def _train_step(inputs, variables):
        images, labels = inputs["image"], inputs["label"]
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            onehot = tf.one_hot(labels, num_classes)
            per_example = tf_keras.losses.categorical_crossentropy(
                onehot, logits, from_logits=True, label_smoothing=label_smoothing
            )
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            penalty = optim.l2_penalty(kernels, train_cfg.weight_decay)
            total = loss + penalty / strategy.num_replicas_in_sync
            scaled = optimizer.get_scaled_loss(total) if policy == "mixed_float16" else total
        grads = tape.gradient(scaled, variables)
        if policy == "mixed_float16":
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        correct = tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32)
        return loss, tf.reduce_sum(correct) / global_batch

    @tf.function
    def eval_step(inputs):
        def fn(inputs):
            logits = tf.cast(model(inputs["image"], training=False), tf.float32)
            mask = inputs["mask"]
            onehot = tf.one_hot(inputs["label"], num_classes)
            loss = tf_keras.losses.categorical_crossentropy(onehot, logits, from_logits=True)
            correct = tf.cast(tf.equal(tf.argmax(logits, -1), inputs["label"]), tf.float32)
            return tf.reduce_sum(loss * mask), tf.reduce_sum(correct * mask), tf.reduce_sum(mask)

        results = strategy.run(fn, args=(inputs,))
        return [strategy.reduce("SUM", r, axis=None) for r in results]

    def evaluate() -> tuple[float, float, int]:
        loss_sum = correct = count = 0.0
        for inputs in strategy.experimental_distribute_dataset(eval_ds):
            batch_loss, batch_correct, batch_count = eval_step(inputs)
            loss_sum += float(batch_loss)
            correct += float(batch_correct)
            count += float(batch_count)
        return loss_sum / max(count, 1.0), correct / max(count, 1.0), round(count)

    train_iter = iter(strategy.experimental_distribute_dataset(train_ds))
    writer = tf.summary.create_file_writer(os.path.join(outdir, "tb")) if chief else None
    unfrozen_loop = None
    frozen_loop = None
    wall_start = time.time() - (history[-1]["wall_time_s"] if history else 0.0)

    for epoch in range(start_epoch, train_cfg.epochs):
        frozen = epoch < train_cfg.freeze_backbone_epochs
        _set_backbone_trainable(model, not frozen)
        if frozen:
            frozen_loop = frozen_loop or make_train_loop(model.trainable_variables)
            loop = frozen_loop
        else:
            unfrozen_loop = unfrozen_loop or make_train_loop(model.trainable_variables)
            loop = unfrozen_loop
        progress = _Progress(steps_per_epoch, epoch + 1, train_cfg.epochs)
        epoch_end = (epoch + 1) * steps_per_epoch
        losses, top1s, weights = [], [], []
        train_time = 0.0
        every = train_cfg.checkpoint_every_steps
        while (current := int(step.numpy())) < epoch_end:
            chunk = min(train_cfg.steps_per_loop, epoch_end - current)
            if every:
                chunk = min(chunk, every - current % every)
            t0 = time.time()
            loss, top1 = loop(train_iter, tf.constant(chunk))
            loss, top1 = float(loss), float(top1)
            train_time += time.time() - t0
            current = int(step.numpy())
            if not math.isfinite(loss):
                raise UserError(
                    f"training loss became {loss} at step {current}; stopped, the last good "
                    f"checkpoint ({manager.latest_checkpoint or 'none'}) is kept; lower "
                    "train.learning_rate or check the data"
                )
            losses.append(loss)
            top1s.append(top1)
            weights.append(chunk)
            progress.update(current - epoch * steps_per_epoch, loss, top1)
            if every and current < epoch_end and current % every == 0:
                manager.save(checkpoint_number=current)

        with ema.swapped() if ema is not None else contextlib.nullcontext():
            eval_loss, eval_top1, eval_count = evaluate()
        if eval_top1 > best_top1:  # the same on every worker: it was all-reduced
            best_top1 = eval_top1
            best_weights = export_weights(model, ema)
            if chief:
                tf.io.gfile.makedirs(os.path.join(workdir, "best"))
                save_h5_atomic(
                    inference_model(best_weights, model_cfg, num_classes),
                    os.path.join(workdir, "best", "model.h5"),
                )
        steps_done = sum(weights)
        current = int(step.numpy())
        metrics = EpochMetrics(
            epoch=epoch + 1,
            step=current,
            train_loss=float(np.average(losses, weights=weights)) if weights else float("nan"),
            train_top1=float(np.average(top1s, weights=weights)) if weights else float("nan"),
            eval_loss=eval_loss,
            eval_top1=eval_top1,
            eval_examples=eval_count,
            images_per_sec=steps_done * batch / train_time if train_time else 0.0,
            train_time_s=train_time,
            wall_time_s=time.time() - wall_start,
            learning_rate=float(schedule(current - 1)),
            skipped_images=skipped,
        )
        history.append(dataclasses.asdict(metrics))
        line = (
            f"epoch {metrics.epoch}/{train_cfg.epochs} step {metrics.step}: "
            f"train_loss {metrics.train_loss:.4f} eval_loss {metrics.eval_loss:.4f} "
            f"eval_top1 {metrics.eval_top1:.4f} ({eval_count} images) "
            f"{metrics.images_per_sec:.0f} img/s, skipped images: {skipped}"
        )
        print(line, flush=True)
        if chief:
            write_json_atomic(metrics_path, history)
            with writer.as_default(step=metrics.step):
                for key in (
                    "train_loss",
                    "train_top1",
                    "eval_loss",
                    "eval_top1",
                    "images_per_sec",
                    "learning_rate",
                ):
                    tf.summary.scalar(key, getattr(metrics, key))
            writer.flush()
        manager.save(checkpoint_number=current)

    final_weights = export_weights(model, ema)
    if chief:
        _write_final(final_weights, model_cfg, num_classes, workdir, train_cfg.save_saved_model)
    else:
        tf.io.gfile.rmtree(outdir)
    return history


def _write_final(
    weights: list[np.ndarray], model_cfg, num_classes: int, workdir: str, saved_model: bool
) -> None:
    """final/ and best/: model.h5 and saved_model/ with the weights export will use."""
    final = inference_model(weights, model_cfg, num_classes)
    final_dir = os.path.join(workdir, "final")
    tf.io.gfile.makedirs(final_dir)
    save_h5_atomic(final, os.path.join(final_dir, "model.h5"))
    if not saved_model:
        return
    _save_saved_model(final, os.path.join(final_dir, "saved_model"))
    best_h5 = os.path.join(workdir, "best", "model.h5")
    if tf.io.gfile.exists(best_h5):
        best = inference_model(weights, model_cfg, num_classes)
        best.load_weights(local_copy(best_h5))
        _save_saved_model(best, os.path.join(workdir, "best", "saved_model"))


def local_copy(path: str) -> str:
    """h5py reads local files only: a gs:// or Drive path is copied to a temp folder first."""
    if os.path.exists(path):
        return path
    local = os.path.join(tempfile.mkdtemp(), os.path.basename(path))
    tf.io.gfile.copy(path, local, overwrite=True)
    return local


def _save_saved_model(model: tf_keras.Model, path: str) -> None:
    tmp = f"{path}.tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    model.save(tmp, include_optimizer=False, save_format="tf")
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
    tf.io.gfile.rename(tmp, path)
