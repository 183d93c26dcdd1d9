"""What every benchmark script shares: the machine it ran on and where its JSON goes."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def results_path(name: str) -> str:
    """The default output: benchmarks/results/<name>.json."""
    return os.path.join(ROOT, "benchmarks", "results", f"{name}.json")


def machine() -> dict:
    import tensorflow as tf

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
    }


def commit() -> str:
    """The checkout's commit ("+dirty" with uncommitted changes in tracked files)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


_STARTED_AT: str | None = None


def started_at() -> str:
    """The commit this benchmark started at (read once, when first asked: at import)."""
    global _STARTED_AT
    if _STARTED_AT is None:
        _STARTED_AT = commit()
    return _STARTED_AT


def write_results(path: str, results: dict) -> None:
    """`results` as JSON at `path` (atomically), stamped with the commit the benchmark
    started at and the command that measured it (every results file says what made it)."""
    results.setdefault("commit", started_at())
    results.setdefault("command", " ".join(["python", *sys.argv]))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)
    print(f"wrote {path}")


STAGES = ("[train]", "[export]", "[benchmark]", "[examples]")


def stage_times(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Seconds from each stage's first log line to the next stage's (the last: to `end`)."""
    starts = {}
    for t, line in lines:
        for stage in STAGES:
            if line.startswith(stage) and stage not in starts:
                starts[stage] = t
    ordered = sorted(starts.items(), key=lambda kv: kv[1])
    times = {}
    for i, (stage, start) in enumerate(ordered):
        stop = ordered[i + 1][1] if i + 1 < len(ordered) else end
        times[stage.strip("[]")] = round(stop - start, 1)
    return times


def run_pipeline(
    config: str, workdir: str, fresh: bool = True
) -> tuple[float, list[tuple[float, str]]]:
    """`python pipeline.py` in `workdir` (emptied first when `fresh`), its lines timestamped
    (and kept in pipeline.log); exits with 1 if it fails. Returns (wall seconds, lines)."""
    if fresh and os.path.exists(workdir):
        shutil.rmtree(workdir)
    command = [sys.executable, "pipeline.py", f"--config={config}", f"--workdir={workdir}"]
    print("$", " ".join(command), flush=True)
    start = time.time()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout:
            lines.append((time.time() - start, line.rstrip("\n")))
            print(f"{lines[-1][0]:8.1f}s  {line}", end="", flush=True)
    wall = time.time() - start
    with open(os.path.join(workdir, "pipeline.log"), "w") as f:
        f.writelines(f"{t:8.1f}s  {line}\n" for t, line in lines)
    if process.returncode != 0:
        print(f"the pipeline failed (exit {process.returncode}); see {workdir}/pipeline.log")
        sys.exit(1)
    return wall, lines


def read_pipeline_log(path: str) -> list[tuple[float, str]]:
    """The (seconds, line) pairs `run_pipeline` wrote to a workdir's pipeline.log."""
    lines = []
    with open(path) as f:
        for line in f:
            stamp, _, text = line.strip("\n").partition("s  ")
            lines.append((float(stamp), text))
    return lines


def copy_report(workdir: str, docs: str) -> None:
    """The pipeline's report.md, report.json and PNGs of `workdir`, copied into `docs`."""
    os.makedirs(docs, exist_ok=True)
    for name in sorted(os.listdir(workdir)):
        if name.startswith("report.") or name.endswith(".png"):
            shutil.copy(os.path.join(workdir, name), os.path.join(docs, name))


def train_until(
    config: str, workdir: str, overrides: list[str], epoch_line, stop, log_name: str = ""
) -> list[dict]:
    """`train.py --config=CONFIG` plus `overrides` in a fresh `workdir`, read epoch by epoch:
    `epoch_line(line)` gives a dict of an epoch's figures (or None for other lines), each
    stamped with its seconds; training stops once `stop(epochs)` holds. Returns the epochs."""
    shutil.rmtree(workdir, ignore_errors=True)
    command = [sys.executable, "train.py", f"--config={config}", f"--workdir={workdir}", *overrides]
    print("$", " ".join(command), flush=True)
    start = time.time()
    epochs: list[dict] = []
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout:
            figures = epoch_line(line)
            if figures is None:
                continue
            epochs.append({**figures, "seconds": round(time.time() - start, 1)})
            print(f"  {log_name}: {epochs[-1]}", flush=True)
            if stop(epochs):
                process.terminate()
                break
        process.wait()
    return epochs


def read_run(workdir: str) -> tuple[dict, dict, list[dict]]:
    """A finished pipeline run's report.json, export/export_report.json and metrics.json."""
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(workdir, "export", "export_report.json")) as f:
        export = json.load(f)
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    return report, export, metrics


def desktop_latency(report: dict) -> dict:
    """{mode_Nt: median and p90 in us} of a pipeline report's desktop benchmark."""
    return {
        f"{r['mode']}_{r['threads']}t": {"median_us": r["median_us"], "p90_us": r["p90_us"]}
        for run in report["runs"]
        for r in run["benchmark"]
        if r.get("target", "desktop") == "desktop"
    }


started_at()  # the commit when the script starts, not when it writes
