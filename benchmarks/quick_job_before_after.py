"""The `:quick` main job of an earlier checkout and of this one, side by side on one machine.

    git worktree add /tmp/before <commit>
    python benchmarks/quick_job_before_after.py --before=/tmp/before \
        [--out=benchmarks/results/quick_job_before_after.json]

Runs `python pipeline.py --config=configs/fashion_mnist.py:quick` in each checkout, one after
the other (never at once: 2 cores), in fresh workdirs, and writes both wall times, their ratio
and each report's rows. A refactoring of the stages should leave the ratio near 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

import common  # benchmarks/common.py: the script's own folder is on sys.path

_BEFORE = flags.DEFINE_string("before", None, "A checkout of the earlier commit.", required=True)
_OUT = flags.DEFINE_string("out", common.results_path("quick_job_before_after"), "JSON output.")
_CONFIG = "configs/fashion_mnist.py:quick"


def run_job(checkout: str) -> dict:
    workdir = tempfile.mkdtemp(prefix="quick_job_")
    command = [sys.executable, "pipeline.py", f"--config={_CONFIG}", f"--workdir={workdir}"]
    start = time.time()
    result = subprocess.run(command, cwd=checkout, capture_output=True, text=True, check=False)
    wall = time.time() - start
    if result.returncode != 0:
        raise SystemExit(f"the quick job in {checkout} failed: {result.stderr[-1000:]}")
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, check=False
    ).stdout.strip()
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    return {"checkout": checkout, "commit": commit, "wall_time_s": round(wall, 1),
            "rows": report["rows"], "metrics": report["runs"][0]["metrics"]}  # fmt: skip


def main(argv):
    del argv
    before = run_job(os.path.abspath(_BEFORE.value))
    after = run_job(common.ROOT)
    results = {
        "machine": common.machine(),
        "config": _CONFIG,
        "before": before,
        "after": after,
        "after_over_before": round(after["wall_time_s"] / before["wall_time_s"], 3),
    }
    common.write_results(_OUT.value, results)
    print(
        f"quick job: before {before['wall_time_s']} s ({before['commit'][:7]}), after "
        f"{after['wall_time_s']} s ({after['commit'][:7]}): {results['after_over_before']}x"
    )


if __name__ == "__main__":
    app.run(main)
