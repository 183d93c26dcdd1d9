"""The README's main job, timed end to end, with its report kept as the documented example.

    python benchmarks/main_job.py [--config=configs/fashion_mnist.py] [--limit_min=45]
        [--workdir=/tmp/mnv2_main_job] [--docs=docs/main_job]
        [--out=benchmarks/results/main_job.json]

Runs `python pipeline.py --config=CONFIG --workdir=WORKDIR` (the README's command) in a
fresh workdir as a child process, timestamps every line it prints to time each stage (train,
export, benchmark, report), then copies report.md, report.json and the PNGs into --docs and
writes the wall times, the limit and the report's rows to --out. Exit status 1 if the job
failed or took longer than --limit_min.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

import common  # benchmarks/common.py: the script's own folder is on sys.path
from mnv2_tf import tasks

_CONFIG = flags.DEFINE_string("config", "configs/fashion_mnist.py", "The pipeline's --config.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/mnv2_main_job", "A fresh workdir (emptied).")
_DOCS = flags.DEFINE_string("docs", os.path.join(common.ROOT, "docs", "main_job"), "Report copy.")
_OUT = flags.DEFINE_string("out", common.results_path("main_job"), "JSON output.")
_LIMIT = flags.DEFINE_float("limit_min", 45.0, "The target wall time, minutes.")


def main(argv):
    del argv
    workdir = _WORKDIR.value
    wall, lines = common.run_pipeline(_CONFIG.value, workdir)

    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    common.copy_report(workdir, _DOCS.value)
    metrics = report["runs"][0]["metrics"]
    best_metric = tasks.task_class(report["runs"][0]["task"]).best_metric
    results = {
        "command": f"python pipeline.py --config={_CONFIG.value} --workdir=WORKDIR",
        "machine": common.machine(),
        "wall_time_s": round(wall, 1),
        "wall_time_min": round(wall / 60, 2),
        "limit_min": _LIMIT.value,
        "within_limit": wall <= 60 * _LIMIT.value,
        "stage_seconds": common.stage_times(lines, wall),
        "epochs": len(metrics),
        "task": report["runs"][0]["task"],
        "final_eval": {best_metric: metrics[-1][best_metric]},
        "rows": report["rows"],
        "docs": os.path.relpath(_DOCS.value, common.ROOT),
    }
    common.write_results(_OUT.value, results)
    print(
        f"main job: {wall / 60:.1f} min (limit {_LIMIT.value:.0f}), stages "
        f"{results['stage_seconds']}, final {best_metric} {metrics[-1][best_metric]:.4f}; "
        f"report copied to {_DOCS.value}"
    )
    if not results["within_limit"]:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
