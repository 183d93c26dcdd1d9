"""Levers for the segmentation default's mIOU, side by side: the first epochs of each variant.

    python benchmarks/segmentation_levers.py [--epochs_seen=3] [--only=A,B]
        [--out=benchmarks/results/segmentation_levers.json]

Each variant is `train.py --config=configs/segmentation_fmnist.py` plus its overrides, with
its full 10-epoch schedule (so its first epochs are what its full run's would be), stopped
after --epochs_seen epochs; the eval mIOU and pixel accuracy of each epoch and the seconds to
it are written to JSON (variants of earlier invocations kept). Variants run one after the
other on the same machine.
"""

from __future__ import annotations

import json
import os
import re

from absl import app, flags

import common

_EPOCHS = flags.DEFINE_integer("epochs_seen", 3, "Epochs of each variant.")
_OUT = flags.DEFINE_string("out", common.results_path("segmentation_levers"), "JSON output.")
_ONLY = flags.DEFINE_list("only", None, "Run only these variants.")
_CLASSIFIER = flags.DEFINE_string(
    "classifier", "/tmp/mnv2_main_job",
    "A Fashion-MNIST classification workdir (alpha 0.35; benchmarks/main_job.py writes one "
    "here) whose backbone initializes the 'from the classifier' variant.",
)  # fmt: skip

VARIANTS = {  # names without commas (--only takes a comma-separated list)
    "default (OS 16)": [],
    "output stride 8": ["--config.model.output_stride=8"],
    "alpha 1.0": ["--config.model.alpha=1.0"],
    "scales 0.75-1.25": [
        "--config.segmentation.min_scale=0.75",
        "--config.segmentation.max_scale=1.25",
    ],
    "learning rate 0.1": ["--config.train.learning_rate=0.1"],
    "ASPP": ["--config.segmentation.aspp=True"],
    "alpha 0.35": ["--config.model.alpha=0.35"],
    # The paper starts from ImageNet weights; offline, the Fashion-MNIST classifier (trained
    # on the training items, 91.8% top-1) stands in: its stride-1 stem sees 28 px items, as
    # this stride-2 stem sees the 25-77 px items of a 128 px canvas at about half.
    "alpha 0.35 from the classifier": ["--config.model.alpha=0.35", "CLASSIFIER"],
}
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+ .*eval_miou ([\d.]+) eval_pixel_accuracy ([\d.]+)")


def _epoch(line: str) -> dict | None:
    match = EPOCH_LINE.search(line)
    if not match:
        return None
    return {"epoch": int(match[1]), "miou": float(match[2]), "pixel_accuracy": float(match[3])}


def main(argv):
    del argv
    results = {"machine": common.machine(), "stop": f"{_EPOCHS.value} epochs", "variants": {}}
    if os.path.exists(_OUT.value):
        with open(_OUT.value) as f:
            results["variants"] = json.load(f).get("variants", {})
    for name, overrides in VARIANTS.items():
        if _ONLY.value and name not in _ONLY.value:
            continue
        workdir = f"/tmp/mnv2_seg_levers/{re.sub(r'[^a-z0-9]+', '_', name.lower())}"
        init = f"--config.model.init_from={_CLASSIFIER.value}"
        overrides = [init if o == "CLASSIFIER" else o for o in overrides]
        epochs = common.train_until(
            "configs/segmentation_fmnist.py", workdir, overrides, _epoch,
            lambda e: len(e) >= _EPOCHS.value, name,
        )  # fmt: skip
        results["variants"][name] = {"overrides": overrides, "epochs": epochs}
        common.write_results(_OUT.value, results)


if __name__ == "__main__":
    app.run(main)
