"""The trainer: outputs, resume (also after SIGKILL), distribution, bad input."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mnv2_tf.config import base_config
from mnv2_tf.errors import UserError
from mnv2_tf.train import precise_bn, trainer
from tests.conftest import built_once

ROOT = pathlib.Path(__file__).resolve().parents[1]
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST), reason="apt-get install dataset-fashion-mnist"
)

# A tiny run on Fashion-MNIST: 32 px, alpha 0.35, a few steps, and a tiny table of
# inverted residual blocks (2.4x faster to build and trace than the paper's 17 blocks): the
# trainer's machinery does not depend on the depth. Tests that check what the paper's
# network does pass "model.blocks": () (the full table).
TINY = {
    "model.blocks": ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)),
    "model.alpha": 0.35,
    "model.input_size": 32,
    "model.remove_early_strides": 1,
    "data.max_train_examples": 256,
    "data.max_eval_examples": 100,
    "data.shuffle_buffer": 256,
    "train.epochs": 2,
    "train.batch_size": 32,
    "train.steps_per_epoch": 4,
    "train.optimizer": "sgd",
    "train.learning_rate": 0.05,
    "train.lr_batch_size": 32,
    "train.schedule": "cosine",
    "train.ema_decay": 0.99,
    "train.steps_per_loop": 2,
    "train.save_saved_model": False,
    "train.precise_bn_images": 64,
}


def tiny_config(**overrides):
    config = base_config()
    for key, value in {**TINY, **overrides}.items():
        section, field = key.split(".")
        config[section][field] = value
    config.lock()
    return config


def run_train(workdir, *overrides, env=None, config="configs/fashion_mnist.py", timeout=600):
    """train.py in a subprocess, with TINY and `overrides` as --config flags."""
    args = [f"--config.{k}={v}" for k, v in TINY.items()] + list(overrides)
    return subprocess.run(
        [sys.executable, "train.py", f"--config={config}", f"--workdir={workdir}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One tiny run (2 epochs, both saved model formats), built once per session for the
    tests that read it or train on from a copy of it: (workdir, metrics)."""
    config = tiny_config(**{"train.save_saved_model": True})

    def build(path):  # train() returns the history it also writes: keep both to compare
        history = trainer.train(config, str(path))
        (path.parent / "trained_history.json").write_text(json.dumps(history))

    path = built_once(tmp_path_factory, "trained", build)
    return path, json.loads((path.parent / "trained_history.json").read_text())


def copy_of(trained, tmp_path):
    shutil.copytree(trained[0], tmp_path / "run")
    return tmp_path / "run"


@needs_fmnist
def test_tiny_run_writes_every_output(trained):
    tmp_path, history = trained
    assert [m["epoch"] for m in history] == [1, 2]
    for name in ("config.json", "labels.txt", "metrics.json", "best/model.h5", "final/model.h5"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "final" / "saved_model" / "saved_model.pb").exists()
    assert (tmp_path / "best" / "saved_model" / "saved_model.pb").exists()
    assert list((tmp_path / "tb").iterdir())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == history
    for key in (
        "epoch",
        "train_loss",
        "eval_loss",
        "eval_top1",
        "eval_examples",
        "images_per_sec",
        "wall_time_s",
    ):
        assert key in metrics[0]
    assert metrics[0]["eval_examples"] == 100 and metrics[1]["step"] == 8
    assert all(np.isfinite(m["train_loss"]) and 0 <= m["eval_top1"] <= 1 for m in metrics)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["num_classes"] == 10 and config["task"] == "classification"
    assert config["preprocessing"]["input_size"] == 32 and config["preprocessing"]["mean"] == 127.5
    assert (tmp_path / "labels.txt").read_text().splitlines()[0] == "T-shirt/top"
    # The saved model is the deployable one: softmax head, EMA weights.
    final = tf_keras.models.load_model(tmp_path / "final" / "model.h5", compile=False)
    probs = final.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


@needs_fmnist
def test_eval_uses_the_ema_weights(trained):
    tmp_path = trained[0]
    final = tf_keras.models.load_model(tmp_path / "final" / "model.h5", compile=False)
    reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
    names = reader.get_variable_to_shape_map()
    ema_key = next(k for k in names if k.startswith("ema/shadows/0/"))
    model_key = next(k for k in names if k.startswith("model/layer_with_weights-0/kernel"))
    np.testing.assert_allclose(
        final.get_layer("Conv1").get_weights()[0], reader.get_tensor(ema_key)
    )
    assert not np.allclose(reader.get_tensor(ema_key), reader.get_tensor(model_key))


@needs_fmnist
def test_rerunning_resumes_and_keeps_one_run_of_metrics(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    first = json.loads((run / "metrics.json").read_text())
    history = trainer.train(tiny_config(**{"train.epochs": 3}), str(run))
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert history[:2] == first
    assert [m["step"] for m in history] == [4, 8, 12]
    # Nothing left to do: a third run changes nothing.
    again = trainer.train(tiny_config(**{"train.epochs": 3}), str(run))
    assert again == history


@pytest.mark.slow  # ~25 s: a training killed and resumed
@needs_fmnist
def test_sigkill_mid_epoch_resumes_from_the_last_checkpoint(tmp_path):
    args = (
        "--config.train.steps_per_epoch=60",
        "--config.train.epochs=1",
        "--config.train.checkpoint_every_steps=4",
    )
    command = [
        sys.executable,
        "train.py",
        "--config=configs/fashion_mnist.py",
        f"--workdir={tmp_path}",
    ]
    command += [f"--config.{k}={v}" for k, v in TINY.items()] + list(args)
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoints = tmp_path / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(checkpoints.glob("ckpt-*.index"))) < 2:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = tf.train.get_checkpoint_state(str(checkpoints))
    assert saved is not None, "no checkpoint was written before the kill"
    killed_at = int(saved.model_checkpoint_path.rsplit("-", 1)[1])
    assert 0 < killed_at < 60
    for path in saved.all_model_checkpoint_paths:  # every listed checkpoint is readable
        tf.train.load_checkpoint(path).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")
    result = run_train(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from {saved.model_checkpoint_path} at step {killed_at}" in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [(m["epoch"], m["step"]) for m in metrics] == [(1, 60)]


@needs_fmnist
def test_a_workdir_of_another_model_is_refused(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    with pytest.raises(UserError, match=r"another model \(model.alpha: 0.35 there, 0.5 now\)"):
        trainer.train(tiny_config(**{"model.alpha": 0.5}), str(run))


@needs_fmnist
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    good = tf.train.latest_checkpoint(str(run / "checkpoints"))
    with pytest.raises(UserError, match="loss became nan"):
        trainer.train(tiny_config(**{"train.epochs": 3, "train.learning_rate": 1e30}), str(run))
    assert tf.train.latest_checkpoint(str(run / "checkpoints")) == good
    assert len(json.loads((run / "metrics.json").read_text())) == 2


def test_bad_input_is_one_line_and_non_zero(tmp_path):
    # Through train.py once: a misspelt field is one line naming the valid ones, exit 2.
    result = run_train(tmp_path / "a", "--config.train.epoch=3")
    assert result.returncode == 2
    assert last_line(result.stderr).startswith(
        "error: unknown config field train.epoch (did you mean train.epochs?)"
    )
    assert "train.batch_size" in last_line(result.stderr)

    # In-process: what the trainer raises (train.py prints it as that one line, exit 2).
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        trainer.train(tiny_config(**{"data.data_dir": str(tmp_path / "none")}), str(tmp_path / "b"))

    empty = tmp_path / "photos" / "train" / "cats"
    empty.mkdir(parents=True)
    folder = {"data.source": "folder", "data.data_dir": str(tmp_path / "photos")}
    with pytest.raises(UserError, match="no images"):
        trainer.train(tiny_config(**folder), str(tmp_path / "c"))

    with pytest.raises(UserError, match=r"^config model section: input size must be at least"):
        trainer.train(tiny_config(**{"model.input_size": 2}), str(tmp_path / "d"))


def _photo_folder(root, corrupt: bool):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(6):
                pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    if corrupt:
        (root / "train" / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    return root


def test_a_folder_with_a_corrupt_jpeg_trains_to_the_end(tmp_path, capsys):
    root = _photo_folder(tmp_path / "photos", corrupt=True)
    config = tiny_config(
        **{
            "data.source": "folder",
            "data.data_dir": str(root),
            "data.eval_split": "val",
            "data.augment": "inception",
            "train.batch_size": 4,
            "train.lr_batch_size": 4,
        }
    )
    trainer.train(config, str(tmp_path / "run"))
    assert "skipped images: 1" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics) == 2 and metrics[-1]["skipped_images"] == 1
    assert metrics[-1]["eval_examples"] == 12


@pytest.mark.slow  # two 96 px runs
def test_finetune_from_keras_weights_replaces_the_head(tmp_path):
    keras = tf_keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None)
    weights = tmp_path / "imagenet.h5"
    keras.save_weights(str(weights))
    root = _photo_folder(tmp_path / "photos", corrupt=False)
    config = tiny_config(
        **{
            "data.source": "folder",
            "data.data_dir": str(root),
            "data.eval_split": "val",
            "data.augment": "inception",
            "model.init_from": str(weights),
            "model.remove_early_strides": 0,
            "model.blocks": (),  # Keras' network: its weights load by name
            "train.freeze_backbone_epochs": 1,
            "train.batch_size": 4,
        }
    )
    trainer.train(config, str(tmp_path / "run"))
    final = tf_keras.models.load_model(tmp_path / "run" / "final" / "model.h5", compile=False)
    assert final.output_shape == (None, 2)
    # The backbone was initialized from the file and then fine-tuned: close, not equal.
    ours = final.get_layer("block_16_project").get_weights()[0]
    theirs = keras.get_layer("block_16_project").get_weights()[0]
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.9

    # Another run's workdir works as init_from too: its best/model.h5, head included (same
    # classes). At a learning rate of ~0 the new run ends where it started.
    config2 = tiny_config(
        **{
            "data.source": "folder",
            "data.data_dir": str(root),
            "data.eval_split": "val",
            "model.init_from": str(tmp_path / "run"),
            "model.remove_early_strides": 0,
            "model.blocks": (),
            "train.epochs": 1,
            "train.batch_size": 4,
            "train.learning_rate": 1e-12,
            "train.weight_decay": 0.0,
        }
    )
    trainer.train(config2, str(tmp_path / "run2"))
    best = tf_keras.models.load_model(tmp_path / "run" / "best" / "model.h5", compile=False)
    again = tf_keras.models.load_model(tmp_path / "run2" / "final" / "model.h5", compile=False)
    fresh = tf_keras.models.clone_model(best)  # what the same layers hold untrained
    for name in ("block_16_project", "predictions"):
        np.testing.assert_allclose(
            again.get_layer(name).get_weights()[0], best.get_layer(name).get_weights()[0],
            atol=1e-6,
        )  # fmt: skip
        assert not np.allclose(
            fresh.get_layer(name).get_weights()[0], best.get_layer(name).get_weights()[0]
        )


@needs_fmnist
@pytest.mark.parametrize(
    "policy", ["mixed_bfloat16", pytest.param("mixed_float16", marks=pytest.mark.slow)]
)
def test_mixed_precision_trains_on_cpu(tmp_path, policy):
    # bfloat16 is the TPU path, float16 (with loss scaling) the GPU path; both run on a CPU.
    history = trainer.train(
        tiny_config(**{"train.epochs": 1, "train.mixed_precision": policy}), str(tmp_path)
    )
    assert np.isfinite(history[0]["train_loss"])
    runtime = json.loads((tmp_path / "config.json").read_text())["runtime"]
    assert runtime["mixed_precision"] == policy
    final = tf_keras.models.load_model(tmp_path / "final" / "model.h5", compile=False)
    assert final.get_layer("Conv1").dtype_policy.name == "float32"  # deployable as float32


@pytest.mark.slow  # two runs in subprocesses (logical devices need a fresh process)
@needs_fmnist
def test_mirrored_over_two_cpu_devices_matches_one_device(tmp_path):
    common = (
        "--config.model.dropout=0",
        "--config.data.deterministic=True",
        "--config.data.random_erasing=0",
        "--config.train.epochs=1",
        "--config.train.steps_per_epoch=6",
    )
    one = run_train(tmp_path / "one", *common, "--config.train.strategy=default")
    two = run_train(
        tmp_path / "two",
        *common,
        "--config.train.strategy=mirrored",
        "--config.train.logical_cpu_devices=2",
    )
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())[0]
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())[0]
    runtime = json.loads((tmp_path / "two" / "config.json").read_text())["runtime"]
    assert runtime["replicas"] == 2 and runtime["strategy"] == "MirroredStrategy"
    # Per-replica batch-norm statistics (half batches) make the two differ a little.
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=0.1)
    assert m2["eval_examples"] == m1["eval_examples"] == 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two workers in subprocesses
@needs_fmnist
def test_two_workers_on_localhost_complete_an_epoch(tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    command_args = [f"--config.{k}={v}" for k, v in TINY.items()] + [
        "--config.train.epochs=1",
        "--config.train.steps_per_epoch=3",
    ]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "train.py",
                    "--config=configs/fashion_mnist.py",
                    f"--workdir={tmp_path}",
                    *command_args,
                ],
                cwd=ROOT,
                env={**os.environ, "TF_CONFIG": tf_config},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1]
    runtime = json.loads((tmp_path / "config.json").read_text())["runtime"]
    assert runtime["strategy"] == "MultiWorkerMirroredStrategy" and runtime["replicas"] == 2
    assert not (tmp_path / ".worker_1").exists()


def test_precise_bn_sets_the_mean_of_the_batch_statistics():
    inputs = tf_keras.Input((4, 4, 2))
    x = tf_keras.layers.Conv2D(3, 1, use_bias=False, name="conv")(inputs)
    model = tf_keras.Model(inputs, tf_keras.layers.BatchNormalization(momentum=0.99)(x))
    norm = model.layers[-1]
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(i, 1 + i, (8, 4, 4, 2)).astype(np.float32)} for i in range(3)]
    seen = precise_bn.update(model, batches, tf.distribute.get_strategy())
    assert seen == 3 and norm.momentum == 0.99  # restored
    kernel = model.get_layer("conv").kernel.numpy()[0, 0]
    features = [b["image"].reshape(-1, 2) @ kernel for b in batches]
    np.testing.assert_allclose(
        norm.moving_mean.numpy(), np.mean([f.mean(0) for f in features], 0), rtol=1e-4
    )
    # Keras' batch variance is unbiased (n - 1) in its moving average.
    variances = [f.var(0, ddof=1) for f in features]
    np.testing.assert_allclose(norm.moving_variance.numpy(), np.mean(variances, 0), rtol=1e-3)


@pytest.mark.slow  # two trainings; the default suite checks precise_bn itself, exactly
@needs_fmnist
def test_a_short_run_evaluates_near_what_it_learnt(tmp_path):
    """64 steps at BN momentum 0.99 leave the moving statistics half their initial values:
    evaluated with them the model sits near chance; precise BN re-estimates them."""
    common = {
        "data.max_train_examples": 2048, "train.steps_per_epoch": 32, "train.epochs": 2,
        "model.bn_momentum": 0.99, "train.ema_decay": 0.0, "data.deterministic": True,
        "model.blocks": (),
    }  # fmt: skip
    stale = trainer.train(
        tiny_config(**common, **{"train.precise_bn_images": 0}), str(tmp_path / "stale")
    )
    precise = trainer.train(
        tiny_config(**common, **{"train.precise_bn_images": 256}), str(tmp_path / "precise")
    )
    assert abs(stale[-1]["train_loss"] - precise[-1]["train_loss"]) < 0.5  # as well trained
    assert stale[-1]["eval_top1"] < 0.35
    assert precise[-1]["eval_top1"] > stale[-1]["eval_top1"] + 0.2
