"""The training loop: from a config and a workdir to checkpoints, models and metrics.

`train` reads top to bottom in parts: the run's data and resolved config (`_prepare`),
the model, optimizer, EMA and checkpoint, restored or initialised (`_restore_or_init`),
the compiled step functions (`_Steps`), then the epochs: train steps, evaluation with the
EMA weights, metrics, checkpoint, best model; last the final models. What depends on the
task (model, labels, loss, metrics, the deployable model) comes from `mnv2_tf.tasks`.

Running it again on the same workdir resumes from the last checkpoint with the optimizer,
EMA, step and epoch restored; checkpoints are complete-or-absent (TensorFlow writes the
`checkpoint` index file last and atomically), and every other file is written atomically.

Workdir layout:
  config.json          the resolved config (+ dataset facts, preprocessing, strategy)
  labels.txt           one class name per line, in label order
  metrics.json         one object per completed epoch
  checkpoints/         tf.train.Checkpoint: model, optimizer, EMA, step
  best/, final/        model.h5 (the task's inference model, EMA weights) and, at the end,
                       saved_model/
  tb/                  TensorBoard logs
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time

import ml_collections
import numpy as np
import tensorflow as tf
import tf_keras

from mnv2_tf import backbones, fileio, models, tasks
from mnv2_tf import config as config_lib
from mnv2_tf.errors import UserError
from mnv2_tf.train import distribute, optim, precise_bn
from mnv2_tf.train.ema import EMA

# --- the run's data and resolved config ----------------------------------------------------


@dataclasses.dataclass
class _Data:
    task: tasks.Task
    train_ds: tf.data.Dataset
    eval_ds: tf.data.Dataset
    bn_ds: tf.data.Dataset | None  # training images for precise BN (eval preprocessing)
    steps_per_epoch: int
    skipped: int
    resolved: dict  # config.json


def _prepare(config, strategy, policy: str) -> _Data:
    """Loads both splits, builds the task for their classes and the three datasets."""
    train_cfg, data_cfg, model_cfg = config.train, config.data, config.model
    preprocessing = config_lib.preprocessing_of(config)
    batch = train_cfg.batch_size
    if batch % strategy.num_replicas_in_sync:
        raise UserError(
            f"train.batch_size {batch} does not divide over {strategy.num_replicas_in_sync} replicas"
        )
    load = tasks.task_class(config.task).load_source
    train_source = load(data_cfg, data_cfg.train_split)
    eval_source = load(data_cfg, data_cfg.eval_split)
    num_classes = model_cfg.num_classes or len(train_source.class_names)
    task = tasks.get(config, num_classes, train_source.class_names)
    train_ds, _ = task.dataset(
        preprocessing, data_cfg.train_split, training=True, batch_size=batch,
        seed=train_cfg.seed, source=train_source,
    )  # fmt: skip
    eval_ds, _ = task.dataset(
        preprocessing, data_cfg.eval_split, training=False, batch_size=batch, source=eval_source
    )
    bn_ds = precise_bn.dataset(task, preprocessing, train_source, batch)
    steps_per_epoch = train_cfg.steps_per_epoch or train_source.num_examples // batch
    if steps_per_epoch < 1:
        raise UserError(
            f"{train_source.num_examples} training images make no batch of {batch}; "
            "lower train.batch_size"
        )
    resolved = config.to_dict()
    resolved["model"]["num_classes"] = num_classes
    resolved["preprocessing"] = preprocessing.to_dict()
    resolved["dataset"] = {
        "train_examples": train_source.num_examples,
        "eval_examples": eval_source.num_examples,
        "class_names": train_source.class_names,
        "skipped_images": train_source.skipped + eval_source.skipped,
        # detection: boxes clipped to their image or dropped for zero area
        "fixed_boxes": train_source.fixed_boxes + eval_source.fixed_boxes,
    }
    resolved["runtime"] = {
        "strategy": distribute.strategy_name(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "mixed_precision": policy,
        "steps_per_epoch": steps_per_epoch,
    }
    skipped = len(train_source.skipped) + len(eval_source.skipped)
    return _Data(task, train_ds, eval_ds, bn_ds, steps_per_epoch, skipped, resolved)


def _check_workdir_matches(workdir: str, resolved: dict) -> None:
    """A workdir with checkpoints of another task or architecture cannot be resumed."""
    saved = fileio.read_json(os.path.join(workdir, "config.json"))
    if saved is None or not tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")):
        return
    resolved = json.loads(json.dumps(resolved))  # as saved: tuples become lists
    differences = []
    if saved.get("task", "classification") != resolved["task"]:
        differences.append(
            f"task: {saved.get('task', 'classification')!r} there, {resolved['task']!r} now"
        )
    differences += [
        f"model.{k}: {saved['model'].get(k)!r} there, {resolved['model'].get(k)!r} now"
        for k in config_lib.ARCHITECTURE_FIELDS
        if saved["model"].get(k) != resolved["model"].get(k)
    ]
    if differences:
        raise UserError(
            f"workdir {workdir} holds a checkpoint of another model ({'; '.join(differences)}); "
            "use a new --workdir, or the config it was trained with"
        )


# --- model, optimizer, EMA and checkpoint, restored or initialised ---------------------------


@dataclasses.dataclass
class _State:
    model: tf_keras.Model
    schedule: optim.WarmupSchedule
    optimizer: tf_keras.optimizers.Optimizer
    ema: EMA | None
    step: tf.Variable
    manager: tf.train.CheckpointManager


def _restore_or_init(config, task, strategy, policy, steps_per_epoch, outdir, init) -> _State:
    train_cfg = config.train
    with strategy.scope():
        model = task.build_model()
        schedule = optim.make_schedule(train_cfg, steps_per_epoch)
        optimizer = optim.make_optimizer(train_cfg, schedule)
        # Slots exist before any tf.function traces (the frozen-backbone phase updates
        # fewer variables than the rest, and tf.function cannot create variables twice).
        optimizer.build(model.trainable_variables)
        if policy == "mixed_float16":
            optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
        ema = EMA(model, train_cfg.ema_decay) if train_cfg.ema_decay else None
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
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
    elif init:
        _init_from(model, init["path"], task.head_layers, config.model.weights_mirror)
        if ema is not None:
            for shadow, weight in zip(ema.shadows, model.weights, strict=True):
                shadow.assign(weight)
    return _State(model, schedule, optimizer, ema, step, manager)


def resolve_init(model_cfg) -> dict | None:
    """Where `model.init_from` points, as a local file: {"from", "path"} (+ "backbone":
    its own figures). "imagenet" is Keras' official file of the model's width (and the
    nearest resolution); a named backbone is trained first if the cache lacks it; a URL is
    downloaded once; a workdir gives its best/model.h5 (else final/)."""
    source = model_cfg.init_from
    if not source or source.lower() == "none":  # --config.model.init_from=None: from scratch
        return None
    facts = {"from": source}
    if source == "imagenet":
        source = models.imagenet_weights_for(model_cfg.name, model_cfg.alpha, model_cfg.input_size)
        facts["url"] = source
    if source.startswith(backbones.PREFIX):
        source = backbones.ensure(source[len(backbones.PREFIX) :])
        facts["backbone"] = {"workdir": source, **backbones.summary(source)}
    if tf.io.gfile.isdir(source):
        for candidate in ("best/model.h5", "final/model.h5"):
            path = os.path.join(source, candidate)
            if tf.io.gfile.exists(path):
                source = fileio.local_copy(path)
                break
        else:
            raise UserError(f"model.init_from: no best/model.h5 or final/model.h5 in {source}")
    elif models.is_url(source):
        source = models.fetch(source, mirror=model_cfg.weights_mirror)
    elif not os.path.isfile(source):
        raise UserError(
            f"model.init_from: {source} not found; pass a .h5 file, a URL, a training workdir, "
            "imagenet (Keras' weights of model.alpha) or a named backbone "
            f"({', '.join(backbones.PREFIX + n for n in backbones.CONFIGS)})"
        )
    return {**facts, "path": source}


def _resolve_init_here(model_cfg, seed: int) -> dict | None:
    """`resolve_init` inside a run: a backbone built on the way trains with its own
    precision and seed; this run's are set back afterwards."""
    policy = tf_keras.mixed_precision.global_policy()
    try:
        return resolve_init(model_cfg)
    finally:
        tf_keras.mixed_precision.set_global_policy(policy)
        tf_keras.utils.set_random_seed(seed)


def _init_from(model: tf_keras.Model, path: str, head_layers, mirror: str | None = None) -> None:
    """Loads the backbone by layer name from a `.h5` file (see `models.load_imagenet_weights`:
    what transfers, and the one-line error for a file that does not fit)."""
    report = models.load_imagenet_weights(model, path, head_layers=head_layers, mirror=mirror)
    new = report.skipped_head
    print(
        f"initialized {len(report.loaded)} layers from {report.path}"
        + (
            f"; {len(new)} new: {', '.join(new[:3])}{', ...' if len(new) > 3 else ''}"
            if new
            else ""
        ),
        flush=True,
    )


def _set_backbone_trainable(
    model: tf_keras.Model, task: tasks.Task, trainable: bool, freeze_bn: bool
) -> None:
    for layer in model.layers:
        if layer.name not in task.head_layers:
            bn = isinstance(layer, tf_keras.layers.BatchNormalization)
            # A non-trainable BatchNormalization runs in inference mode (Keras 2 semantics).
            layer.trainable = trainable and not (freeze_bn and bn)


def _backbone_variables(model: tf_keras.Model, task: tasks.Task) -> set:
    return {
        v.ref()
        for layer in model.layers
        if layer.name not in task.head_layers
        for v in layer.trainable_weights
    }


# --- compiled step functions --------------------------------------------------------------


def _float32(outputs):
    return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), outputs)


class _Steps:
    """The compiled training loop (one per set of trained variables) and evaluation step."""

    def __init__(self, config, task: tasks.Task, state: _State, strategy, policy: str):
        self.task, self.state, self.strategy = task, state, strategy
        self.loss_scaling = policy == "mixed_float16"
        self.global_batch = config.train.batch_size
        self.weight_decay = config.train.weight_decay
        self.kernels = (
            optim.decayed_kernels(state.model) if config.train.optimizer != "adamw" else []
        )
        self.backbone_lr = config.train.backbone_lr_multiplier
        self._loops = {}
        self._predict = tf.function(self._predict_step)

    def loop(self, frozen: bool):
        """A compiled loop of `num_steps` steps over the trainable variables of now."""
        if frozen not in self._loops:
            variables = self.state.model.trainable_variables
            backbone = _backbone_variables(self.state.model, self.task)
            scales = [self.backbone_lr if v.ref() in backbone else 1.0 for v in variables]
            self._loops[frozen] = tf.function(
                lambda iterator, num_steps: self._loop(iterator, num_steps, variables, scales)
            )
        return self._loops[frozen]

    def _loop(self, iterator, num_steps, variables, scales):
        strategy, state = self.strategy, self.state
        names = self.task.train_metric_names
        loss_sum, sums = tf.constant(0.0), tf.zeros([len(names)])  # autograph: no dicts
        for _ in tf.range(num_steps):
            loss, figures = strategy.run(self._train_step, args=(next(iterator), variables, scales))
            loss_sum += strategy.reduce("SUM", loss, axis=None)
            sums += tf.stack([strategy.reduce("SUM", figures[k], axis=None) for k in names])
            state.step.assign_add(1)
            if state.ema is not None:
                state.ema.update(state.step)
        n = tf.cast(num_steps, tf.float32)
        return loss_sum / n, {name: sums[i] / n for i, name in enumerate(names)}

    def _train_step(self, inputs, variables, scales):
        model, optimizer = self.state.model, self.state.optimizer
        with tf.GradientTape() as tape:
            outputs = _float32(model(inputs["image"], training=True))
            per_example = self.task.loss(inputs, outputs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
            penalty = optim.l2_penalty(self.kernels, self.weight_decay)
            total = loss + penalty / self.strategy.num_replicas_in_sync
            scaled = optimizer.get_scaled_loss(total) if self.loss_scaling else total
        grads = tape.gradient(scaled, variables)
        if self.loss_scaling:
            grads = optimizer.get_unscaled_gradients(grads)
        # With SGD a gradient's scale is its learning rate's (momentum included).
        grads = [g if k == 1.0 else g * k for g, k in zip(grads, scales, strict=True)]
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        figures = self.task.train_metrics(inputs, outputs)
        return loss, {k: tf.reduce_sum(v) / self.global_batch for k, v in figures.items()}

    def _predict_step(self, inputs):
        model = self.state.model
        outputs = self.strategy.run(
            lambda x: _float32(model(x["image"], training=False)), args=(inputs,)
        )
        labels = {k: v for k, v in inputs.items() if k != "image"}
        # One gather per tensor: gathering a whole dict returned one replica's part of each
        # value (TF 2.21, MirroredStrategy over logical CPUs).
        gather = lambda values: tf.nest.map_structure(  # noqa: E731
            lambda v: self.strategy.gather(v, axis=0), values
        )
        return gather(outputs), gather(labels)

    def evaluate(self, eval_ds) -> dict[str, float]:
        """The task's metrics over the whole eval set (on every worker alike)."""
        evaluator = self.task.evaluator()
        for inputs in self.strategy.experimental_distribute_dataset(eval_ds):
            outputs, labels = self._predict(inputs)
            evaluator.update(
                tf.nest.map_structure(np.asarray, labels),
                tf.nest.map_structure(np.asarray, outputs),
            )
        return evaluator.result()


# --- the run ------------------------------------------------------------------------------


class _Progress:
    """Keras' progress bar on a terminal; one line per epoch otherwise."""

    def __init__(self, steps: int, epoch: int, epochs: int, names: tuple[str, ...]):
        self.tty = sys.stdout.isatty()
        self.bar = (
            tf_keras.utils.Progbar(steps, stateful_metrics=["loss", *names]) if self.tty else None
        )
        if self.tty:
            print(f"Epoch {epoch}/{epochs}")

    def update(self, step_in_epoch: int, loss: float, figures: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(step_in_epoch, [("loss", loss), *figures.items()])


class _InferenceModel:
    """The deployable model (the task's inference model, float32), built once per run and
    given the weights of each model to save."""

    def __init__(self, task: tasks.Task):
        self.task, self.model = task, None

    def __call__(self, weights: list[np.ndarray]) -> tf_keras.Model:
        if self.model is None:
            with tf.distribute.get_strategy().scope():
                policy = tf_keras.mixed_precision.global_policy()
                tf_keras.mixed_precision.set_global_policy("float32")
                try:
                    self.model = self.task.build_inference_model()
                finally:
                    tf_keras.mixed_precision.set_global_policy(policy)
        self.model.set_weights(weights)
        return self.model


FINETUNE_LEVERS = {
    "train.freeze_backbone_epochs": 0,
    "train.backbone_lr_multiplier": 1.0,
    "train.freeze_bn": False,
}


def _finetune_levers_only_when_finetuning(config):
    """From scratch (model.init_from unset or None) the fine-tuning levers have nothing to
    keep: they are set to their neutral values, and one line says so. A config that
    fine-tunes by default then trains from scratch with one override."""
    source = config.model.init_from
    if source and source.lower() != "none":
        return config
    set_ = {
        k: v for k, v in FINETUNE_LEVERS.items() if config[k.split(".")[0]][k.split(".")[1]] != v
    }
    if not set_:
        return config
    print(f"from scratch (model.init_from unset): {', '.join(set_)} not applied", flush=True)
    return config_lib.set_fields(config, FINETUNE_LEVERS)


def train(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Trains (or resumes) the run in `workdir`; returns the metrics of every epoch."""
    config = _finetune_levers_only_when_finetuning(config)
    train_cfg = config.train
    if train_cfg.backbone_lr_multiplier != 1.0 and train_cfg.optimizer != "sgd":
        raise UserError(
            f"train.backbone_lr_multiplier={train_cfg.backbone_lr_multiplier} needs "
            f"train.optimizer=sgd (it scales the backbone's gradients, which "
            f"{train_cfg.optimizer} undoes)"
        )
    distribute.split_cpu(train_cfg.logical_cpu_devices)
    strategy = distribute.get_strategy(train_cfg.strategy)
    chief = distribute.is_chief(strategy)
    policy = distribute.set_mixed_precision(train_cfg.mixed_precision, strategy)
    tf_keras.utils.set_random_seed(train_cfg.seed)
    # Non-chief workers of a cluster write their (identical) checkpoints to a scratch folder.
    outdir = (
        workdir if chief else os.path.join(workdir, f".worker_{strategy.cluster_resolver.task_id}")
    )
    fileio.makedirs(outdir)

    run = _prepare(config, strategy, policy)
    task, steps_per_epoch = run.task, run.steps_per_epoch
    _check_workdir_matches(workdir, run.resolved)
    # After the data is read (a bad data_dir costs no backbone build), before the model.
    resumed = tf.train.latest_checkpoint(os.path.join(outdir, "checkpoints"))
    init = None if resumed else _resolve_init_here(config.model, train_cfg.seed)
    if init is not None:
        run.resolved["init"] = init
    elif resumed and "init" in (
        saved := fileio.read_json(os.path.join(workdir, "config.json")) or {}
    ):
        run.resolved["init"] = saved["init"]  # what this run started from
    if chief:
        fileio.write_json_atomic(os.path.join(workdir, "config.json"), run.resolved)
        class_names = run.resolved["dataset"]["class_names"]
        fileio.write_text_atomic(os.path.join(workdir, "labels.txt"), "\n".join(class_names) + "\n")
    state = _restore_or_init(config, task, strategy, policy, steps_per_epoch, outdir, init)
    model, ema, step, manager = state.model, state.ema, state.step, state.manager
    steps = _Steps(config, task, state, strategy, policy)
    inference_model = _InferenceModel(task)

    def averaged_weights(evaluate: bool = True) -> tuple[list[np.ndarray], dict | None]:
        """The weights evaluation and export use: the EMA's where there is one, with BN
        statistics re-estimated for them; and, with `evaluate`, their eval metrics.
        Reading distributed BN statistics is a collective: every worker calls this."""
        with ema.swapped() if ema is not None else contextlib.nullcontext():
            if run.bn_ds is not None:
                precise_bn.update(
                    model, strategy.experimental_distribute_dataset(run.bn_ds), strategy
                )
            result = steps.evaluate(run.eval_ds) if evaluate else None
            return [np.asarray(w) for w in model.get_weights()], result

    metrics_path = os.path.join(workdir, "metrics.json")
    start_epoch = int(step.numpy()) // steps_per_epoch
    # Epochs after the checkpoint (killed between metrics and checkpoint) are done again.
    history = [m for m in fileio.read_json(metrics_path, []) if m["epoch"] <= start_epoch]
    best = max((m[task.best_metric] for m in history), default=-math.inf)
    train_iter = iter(strategy.experimental_distribute_dataset(run.train_ds))
    writer = tf.summary.create_file_writer(os.path.join(outdir, "tb")) if chief else None
    wall_start = time.time() - (history[-1]["wall_time_s"] if history else 0.0)
    weights = None

    for epoch in range(start_epoch, train_cfg.epochs):
        # Train steps.
        frozen = epoch < train_cfg.freeze_backbone_epochs
        _set_backbone_trainable(model, task, not frozen, train_cfg.freeze_bn)
        loop = steps.loop(frozen)
        progress = _Progress(steps_per_epoch, epoch + 1, train_cfg.epochs, task.train_metric_names)
        epoch_end = (epoch + 1) * steps_per_epoch
        losses, figures, chunks, train_time = [], [], [], 0.0
        every = train_cfg.checkpoint_every_steps
        while (current := int(step.numpy())) < epoch_end:
            chunk = min(train_cfg.steps_per_loop, epoch_end - current)
            if every:
                chunk = min(chunk, every - current % every)
            t0 = time.time()
            loss, chunk_figures = loop(train_iter, tf.constant(chunk))
            loss, chunk_figures = float(loss), {k: float(v) for k, v in chunk_figures.items()}
            train_time += time.time() - t0
            current = int(step.numpy())
            if not math.isfinite(loss):
                raise UserError(
                    f"training loss became {loss} at step {current}; stopped, the last good "
                    f"checkpoint ({manager.latest_checkpoint or 'none'}) is kept; lower "
                    "train.learning_rate or check the data"
                )
            losses.append(loss)
            figures.append(chunk_figures)
            chunks.append(chunk)
            progress.update(current - epoch * steps_per_epoch, loss, chunk_figures)
            if every and current < epoch_end and current % every == 0:
                manager.save(checkpoint_number=current)

        # Evaluation, best model, metrics, checkpoint.
        weights, result = averaged_weights()
        metrics = _epoch_metrics(epoch + 1, current, losses, figures, chunks, result)
        if metrics[task.best_metric] > best:  # the same on every worker: it was all-gathered
            best = metrics[task.best_metric]
            if chief:
                fileio.makedirs(os.path.join(workdir, "best"))
                fileio.save_h5_atomic(
                    inference_model(weights), os.path.join(workdir, "best", "model.h5")
                )
        metrics.update(
            images_per_sec=sum(chunks) * train_cfg.batch_size / train_time if train_time else 0.0,
            train_time_s=train_time,
            wall_time_s=time.time() - wall_start,
            learning_rate=float(state.schedule(current - 1)),
            skipped_images=run.skipped,
        )
        history.append(metrics)
        if chief:  # before the epoch's line: whoever reads the line finds it written
            fileio.write_json_atomic(metrics_path, history)
            with writer.as_default(step=metrics["step"]):
                for key, value in metrics.items():
                    if key.startswith(("train_", "eval_", "images_", "learning_")):
                        tf.summary.scalar(key, value)
            writer.flush()
        _log_epoch(metrics, train_cfg.epochs)
        manager.save(checkpoint_number=current)

    if weights is None:  # nothing left to train: the finished run's models again
        weights, _ = averaged_weights(evaluate=False)
    if chief:
        _write_final(inference_model, weights, workdir, train_cfg.save_saved_model)
    else:
        tf.io.gfile.rmtree(outdir)
    return history


def _epoch_metrics(epoch, step, losses, figures, chunks, result) -> dict:
    """One metrics.json entry: step-weighted training figures, then the eval metrics."""

    def average(values):
        return float(np.average(values, weights=chunks)) if chunks else float("nan")

    metrics = {"epoch": epoch, "step": step, "train_loss": average(losses)}
    for name in figures[0] if figures else ():
        metrics[f"train_{name}"] = average([f[name] for f in figures])
    metrics.update({f"eval_{name}": value for name, value in result.items()})
    return metrics


def _log_epoch(metrics: dict, epochs: int) -> None:
    evaluated = " ".join(
        f"{k} {v:.4f}"
        for k, v in metrics.items()
        # per-class figures ("eval_ap/<class>") stay in metrics.json
        if k.startswith("eval_") and k != "eval_examples" and "/" not in k
    )
    print(
        f"epoch {metrics['epoch']}/{epochs} step {metrics['step']}: "
        f"train_loss {metrics['train_loss']:.4f} {evaluated} "
        f"({metrics.get('eval_examples', '-')} images) "
        f"{metrics['images_per_sec']:.0f} img/s, skipped images: {metrics['skipped_images']}",
        flush=True,
    )


def _write_final(inference_model: _InferenceModel, weights, workdir: str, saved_model: bool):
    """final/ and best/: model.h5 and saved_model/ with the weights export will use."""
    final_dir = os.path.join(workdir, "final")
    fileio.makedirs(final_dir)
    fileio.save_h5_atomic(inference_model(weights), os.path.join(final_dir, "model.h5"))
    if not saved_model:
        return
    fileio.save_saved_model_atomic(inference_model.model, os.path.join(final_dir, "saved_model"))
    best_h5 = os.path.join(workdir, "best", "model.h5")
    if fileio.exists(best_h5):
        inference_model.model.load_weights(fileio.local_copy(best_h5))
        fileio.save_saved_model_atomic(
            inference_model.model, os.path.join(workdir, "best", "saved_model")
        )
