"""Levers of any task's config, side by side: the first epochs of each named variant.

    python benchmarks/levers.py --config=configs/segmentation_fmnist.py --name=segmentation_levers \
        --lever="default:" --lever="alpha 0.35:model.alpha=0.35" \
        --lever="alpha 1.0:model.alpha=1.0" [--epochs_seen=2 | --seconds=420]

Each lever is `NAME:FIELD=VALUE;FIELD=VALUE` (empty after the colon: the config as it is): a
`train.py --config=CONFIG` run with those overrides and its full schedule, so that its first
epochs are what its full run's would be, stopped after --epochs_seen epochs (or at its first
epoch past --seconds, to compare variants of different speeds at equal time). Every eval
figure of each epoch comes from the run's own metrics.json (whatever the task measures), with
the seconds to it, and is written to benchmarks/results/<name>.json with the commit and the
command that measured it. Resumable: a lever already in the JSON with the same config,
overrides and stop rule is not run again (`--rerun=NAME` forces it). Levers run one after the
other on the same machine (never at once: 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import sys

from absl import app, flags

import common  # benchmarks/common.py: the script's own folder is on sys.path

_CONFIG = flags.DEFINE_string("config", None, "The task's config (configs/*.py[:variant]).")
_NAME = flags.DEFINE_string("name", None, "Results name: benchmarks/results/<name>.json.")
_LEVERS = flags.DEFINE_multi_string("lever", [], "NAME:FIELD=VALUE;FIELD=VALUE (repeat).")
_EPOCHS = flags.DEFINE_integer("epochs_seen", 2, "Epochs of each lever.")
_SECONDS = flags.DEFINE_float("seconds", 0, "Or stop a lever at its first epoch past this.")
_RERUN = flags.DEFINE_multi_string("rerun", [], "Run these levers again even if recorded.")
_SCRATCH = flags.DEFINE_string("scratch", "/tmp/mnv2_levers", "Where the runs train.")
flags.mark_flags_as_required(["config", "name", "lever"])


def parse_lever(spec: str) -> tuple[str, list[str]]:
    """`NAME:a.b=1;c.d=x` -> (NAME, ["--config.a.b=1", "--config.c.d=x"])."""
    if ":" not in spec:
        raise app.UsageError(f"--lever {spec!r} is not NAME:FIELD=VALUE;FIELD=VALUE")
    name, fields = spec.split(":", 1)
    overrides = []
    for field in filter(None, (f.strip() for f in fields.split(";"))):
        if "=" not in field:
            raise app.UsageError(f"--lever {name!r}: {field!r} is not FIELD=VALUE")
        overrides.append(f"--config.{field}")
    return name.strip(), overrides


def run_lever(name: str, overrides: list[str]) -> list[dict]:
    workdir = os.path.join(_SCRATCH.value, _NAME.value, re.sub(r"[^a-z0-9]+", "_", name.lower()))

    def stop(epochs: list[dict]) -> bool:
        if _SECONDS.value:
            return epochs[-1]["seconds"] >= _SECONDS.value
        return len(epochs) >= _EPOCHS.value

    return common.train_until(
        _CONFIG.value, workdir, overrides, common.epoch_reader(workdir), stop, name
    )


def main(argv):
    del argv
    path = common.results_path(_NAME.value)
    results = {"levers": {}}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    stop_rule = f"first epoch past {_SECONDS.value:.0f} s" if _SECONDS.value else (
        f"{_EPOCHS.value} epochs"
    )  # fmt: skip
    for spec in _LEVERS.value:
        name, overrides = parse_lever(spec)
        recorded = results["levers"].get(name, {})
        same = {"config": _CONFIG.value, "overrides": overrides, "stop": stop_rule}
        if all(recorded.get(k) == v for k, v in same.items()) and name not in _RERUN.value:
            print(f"{name}: measured already (commit {recorded.get('commit')}), skipped")
            continue
        epochs = run_lever(name, overrides)
        results["levers"][name] = {
            **same,
            "epochs": epochs,
            "commit": common.commit(),
            "command": " ".join([sys.executable, *sys.argv]),
            "machine": common.machine(),
        }
        common.write_results(path, results)


if __name__ == "__main__":
    app.run(main)
