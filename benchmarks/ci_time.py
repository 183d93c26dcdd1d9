"""How long CI takes: `.ci/run` in a fresh clone of this checkout's HEAD, as CI runs it.

    python benchmarks/ci_time.py [--clone=/tmp/mnv2_ci_clone] [--out=benchmarks/results/ci_time.json]

Clones HEAD into an empty folder, runs `CI=true bash .ci/run` there (installs, lint, README's
test command on Python 3.11 and 3.12, the slow suite once) and writes, from its own output,
each pytest run's result line and seconds (the default suite per Python, the slow suite) and
the whole run's wall time. The default suite's line is 4:30 on this 2-core machine (5 minutes
the hard limit); the whole `.ci/run` must stay under 60 minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

from absl import app, flags

import common  # benchmarks/common.py: the script's own folder is on sys.path

_CLONE = flags.DEFINE_string("clone", "/tmp/mnv2_ci_clone", "The fresh clone (emptied first).")
_OUT = flags.DEFINE_string("out", common.results_path("ci_time"), "JSON output.")

SECTION = re.compile(r"^ci: Python (3\.\d+)(: the slow tests)?")
RESULT = re.compile(r"^(\d+ passed.*) in ([\d.]+)s")


def parse(lines: list[str]) -> list[dict]:
    """The pytest runs of a `.ci/run` log: which Python, default or slow, result, seconds."""
    runs, section = [], None
    for line in lines:
        if match := SECTION.match(line):
            section = {"python": match[1], "suite": "slow" if match[2] else "default"}
        elif (match := RESULT.match(line.strip("= "))) and section:
            runs.append({**section, "result": match[1], "seconds": float(match[2]),
                         "minutes": f"{int(float(match[2]) // 60)}:{float(match[2]) % 60:04.1f}"})  # fmt: skip
    return runs


def main(argv):
    del argv
    shutil.rmtree(_CLONE.value, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", common.ROOT, _CLONE.value], check=True)
    start = time.time()
    done = subprocess.run(
        ["bash", ".ci/run"], cwd=_CLONE.value, capture_output=True, text=True, check=False,
        env={**os.environ, "CI": "true"},
    )  # fmt: skip
    wall = time.time() - start
    lines = (done.stdout + "\n" + done.stderr).splitlines()
    log = _OUT.value[: -len(".json")] + ".log"
    with open(log, "w") as f:  # the whole output, for a failure's details
        f.write(done.stdout + "\n--- stderr ---\n" + done.stderr)
    results = {
        "commit": common.commit(),
        "exit_code": done.returncode,
        "wall_seconds": round(wall, 1),
        "runs": parse(lines),
        "machine": common.machine(),
        "failed": [line for line in done.stdout.splitlines() if line.startswith("FAILED")],
    }
    for run in results["runs"]:
        print(f"{run['python']} {run['suite']}: {run['result']} in {run['minutes']}")
    print(f".ci/run: exit {done.returncode}, {wall / 60:.1f} min")
    common.write_results(_OUT.value, results)


if __name__ == "__main__":
    app.run(main)
