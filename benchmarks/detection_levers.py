"""Levers for the detection default, side by side: the first epochs of each variant.

    python benchmarks/detection_levers.py [--epochs_seen=3 | --seconds=420] [--only=A,B]
        [--out=benchmarks/results/detection_levers.json]

Each variant is `train.py --config=configs/detection_fmnist.py` plus its overrides, with its
full schedule (so its first epochs are what its full run's would be), stopped after
--epochs_seen epochs (or at its first epoch past --seconds, to compare variants of
different speeds at equal time); the eval mAP@.5 / mAP of each epoch and the seconds to it
are written to JSON (variants of earlier invocations kept). Variants run one after the
other on the same machine.
"""

from __future__ import annotations

import os
import re

from absl import app, flags

import common

_EPOCHS = flags.DEFINE_integer("epochs_seen", 3, "Epochs of each variant.")
_OUT = flags.DEFINE_string("out", common.results_path("detection_levers"), "JSON output.")
_ONLY = flags.DEFINE_list("only", None, "Run only these variants.")
_SECONDS = flags.DEFINE_float("seconds", 0, "Or stop a variant at its first epoch past this.")

VARIANTS = {  # names without commas (--only takes a comma-separated list)
    "no class prior": ["--config.detection.class_prior=0"],
    "class prior 0.01": [],
    "class prior + lr 0.04": ["--config.train.learning_rate=0.04"],
    "class prior + alpha 0.5": ["--config.model.alpha=0.5"],
    "class prior + match IoU 0.4": ["--config.detection.match_threshold=0.4"],
    "class prior + 6 anchors in the lowest layer": [
        "--config.detection.reduce_boxes_in_lowest_layer=False"
    ],
    # Smaller inputs run more epochs in the same time (the items are 28 px at the source).
    "class prior + 128 px (18 epochs)": [
        "--config.model.input_size=128",
        "--config.train.epochs=18",
    ],
    "class prior + 96 px (30 epochs)": ["--config.model.input_size=96", "--config.train.epochs=30"],
}
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+ .*eval_map ([\d.]+) eval_map50 ([\d.]+)")


def _epoch(line: str) -> dict | None:
    match = EPOCH_LINE.search(line)
    if not match:
        return None
    return {"epoch": int(match[1]), "map": float(match[2]), "map50": float(match[3])}


def _stop(epochs: list[dict]) -> bool:
    if _SECONDS.value:
        return epochs[-1]["seconds"] >= _SECONDS.value
    return len(epochs) >= _EPOCHS.value


def run(name: str, overrides: list[str]) -> dict:
    workdir = f"/tmp/mnv2_levers/{re.sub(r'[^a-z0-9]+', '_', name.lower())}"
    epochs = common.train_until(
        "configs/detection_fmnist.py", workdir, overrides, _epoch, _stop, name
    )
    return {"overrides": overrides, "epochs": epochs}


def main(argv):
    del argv
    results = {"machine": common.machine(), "variants": {}}
    if os.path.exists(_OUT.value):
        import json

        with open(_OUT.value) as f:
            results["variants"] = json.load(f).get("variants", {})
    for name, overrides in VARIANTS.items():
        if _ONLY.value and name not in _ONLY.value:
            continue
        results["variants"][name] = run(name, overrides)
        results["variants"][name]["stop"] = (
            f"first epoch past {_SECONDS.value:.0f} s"
            if _SECONDS.value
            else f"{_EPOCHS.value} epochs"
        )
        common.write_results(_OUT.value, results)


if __name__ == "__main__":
    app.run(main)
