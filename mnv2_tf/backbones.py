"""Named backbones: classifiers this project trains itself, built once, kept in a cache.

`model.init_from=backbone:NAME` starts a model from the classifier that the config
`CONFIGS[NAME]` trains (the offline stand-in for the ImageNet weights the paper starts its
detectors and segmenters from). The first run that asks trains it (one line says so, with
the time it took here) into `~/.cache/mnv2_tf/backbones/NAME-<hash of its config>/`, a
training workdir like any other; every later run, of any task, reuses it. Changing the
config changes the hash, so a stale backbone is never reused for a new recipe. A build
that is stopped resumes from its last checkpoint (the folder is renamed into place only
when complete), and two runs that ask at once build it once (a workdir lock).

    python -m mnv2_tf.backbones fmnist      # build it ahead (a cluster, a notebook cell)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import ml_collections

from mnv2_tf import fileio
from mnv2_tf.config import base_config
from mnv2_tf.errors import UserError

PREFIX = "backbone:"
# About the minutes a build took on the 2-core machine (the dense benchmarks record it:
# "backbone" in benchmarks/results/detection_fmnist.json), said before a build.
EXPECTED_MINUTES = {"fmnist": 18}


def fmnist_config() -> ml_collections.ConfigDict:
    """MobileNetV2 0.35 at 64 px with the paper's stride plan, trained on Fashion-MNIST's
    60,000 items pasted as the composites draw theirs (tinted, over random gradients, at
    half to full size): the dense configs' width, stride plan and item scale (a 64 px item
    at 64 px is a 32-96 px item at 160 px seen two maps later), so every layer transfers
    by name to SSDLite at 160 px and DeepLab at 128 px. Chosen over the main job's
    classifier (32 px, stem stride removed, plain items) by fine-tuning both side by side:
    benchmarks/results/backbone_choice.json.

    Written out here rather than derived from configs/fashion_mnist.py, whose training
    section it repeats: the cache is keyed by this config, and an edit of the main job's
    recipe must not retrain every user's backbone."""
    config = base_config()
    config.model.alpha = 0.35
    config.model.input_size = 64
    config.model.dropout = 0.1

    config.data.source = "idx"
    config.data.data_dir = "/usr/share/datasets/fashion-mnist"
    config.data.augment = "paste"

    config.train.epochs = 15
    config.train.batch_size = 128
    config.train.optimizer = "sgd"
    config.train.learning_rate = 0.2
    config.train.lr_batch_size = 256
    config.train.schedule = "cosine"
    config.train.warmup_epochs = 1.0
    config.train.weight_decay = 4e-4
    config.train.label_smoothing = 0.1
    config.train.ema_decay = 0.999
    config.train.strategy = "default"
    config.train.save_saved_model = False
    return config


CONFIGS = {"fmnist": fmnist_config}


def cache_root() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "mnv2_tf", "backbones")


def key(name: str, config: ml_collections.ConfigDict) -> str:
    """NAME-<12 hex digits of the config's JSON>: the cache folder of that recipe."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def config_of(name: str) -> ml_collections.ConfigDict:
    if name not in CONFIGS:
        raise UserError(
            f"model.init_from={PREFIX}{name}: no backbone named {name!r}; "
            f"known: {', '.join(sorted(CONFIGS))}"
        )
    return CONFIGS[name]()


def summary(workdir: str) -> dict:
    """The backbone's own figures, for the runs that start from it: its best top-1 and
    the wall time it was trained in."""
    history = fileio.read_json(os.path.join(workdir, "metrics.json"), [])
    if not history:
        return {}
    best = max(history, key=lambda m: m.get("eval_top1", -1.0))
    return {
        "eval_top1": best.get("eval_top1"),
        # As the reports of the runs that start from it say it.
        "figure": f"top-1 {100 * best.get('eval_top1', 0.0):.2f}% on its own test set "
        f"(epoch {best['epoch']} of {history[-1]['epoch']})",
        "best_epoch": best["epoch"],
        "epochs": history[-1]["epoch"],
        "train_wall_time_s": history[-1]["wall_time_s"],
    }


def folder_of(name: str, root: str | None = None) -> str:
    """The cache folder of backbone `name`'s current recipe (built or not)."""
    return os.path.join(root or cache_root(), key(name, config_of(name)))


def is_built(folder: str) -> bool:
    return fileio.exists(os.path.join(folder, "best", "model.h5"))


def _train(config: ml_collections.ConfigDict, workdir: str) -> None:
    from mnv2_tf.train import trainer  # the trainer imports this module

    trainer.train(config, workdir)


def ensure(name: str, root: str | None = None) -> str:
    """The workdir of backbone `name` (trained here first if the cache lacks it)."""
    config = config_of(name)
    root = root or cache_root()
    folder = folder_of(name, root)
    if is_built(folder):
        return folder
    partial = folder + ".partial"
    fileio.makedirs(partial)
    with fileio.workdir_lock(partial, f"the build of backbone {name}"):
        if is_built(folder):  # built while we waited
            return folder
        print(
            f"backbone {name}: not in {root}; training it once ({config.train.epochs} epochs on "
            f"Fashion-MNIST, about {EXPECTED_MINUTES.get(name, '?')} min on a 2-core CPU, "
            "minutes on a GPU); later runs reuse it",
            flush=True,
        )
        start = time.time()
        config.lock()
        _train(config, partial)
        print(f"backbone {name}: trained in {(time.time() - start) / 60:.1f} min", flush=True)
    os.replace(partial, folder)
    return folder


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python -m mnv2_tf.backbones NAME   (NAME: {', '.join(CONFIGS)})")
        return 2
    try:
        folder = ensure(argv[1])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(folder, json.dumps(summary(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
