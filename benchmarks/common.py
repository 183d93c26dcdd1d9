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


def epoch_reader(workdir: str):
    """For `train_until`: a train.py line -> that epoch's eval figures from the run's
    metrics.json (written before its line), or None for other lines."""
    import re

    pattern = re.compile(r"^epoch (\d+)/\d+ step")

    def read(line: str) -> dict | None:
        match = pattern.match(line)
        if not match:
            return None
        with open(os.path.join(workdir, "metrics.json")) as f:
            entry = json.load(f)[int(match[1]) - 1]
        figures = {k[5:]: v for k, v in entry.items() if k.startswith("eval_") and "/" not in k}
        return {"epoch": entry["epoch"], **figures, "wall_time_s": entry["wall_time_s"]}

    return read


def backbone_before(config) -> dict | None:
    """The named backbone `config` starts from (model.init_from=backbone:NAME), built first
    if the cache lacks it (`python -m mnv2_tf.backbones NAME`, timed apart, as the
    composites are): its workdir, its own figures and whether this run built it."""
    from mnv2_tf import backbones

    source = config.model.init_from or ""
    if not source.startswith(backbones.PREFIX):
        return None
    name = source[len(backbones.PREFIX) :]
    folder = backbones.folder_of(name)
    built = not backbones.is_built(folder)
    start = time.time()
    if built:
        command = [sys.executable, "-m", "mnv2_tf.backbones", name]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
    return {
        "name": name,
        "workdir": folder,
        "built_by_this_run": built,
        "seconds_this_run": round(time.time() - start, 1),
        **backbones.summary(folder),
    }


def dense_header(config_spec: str, config, data_seconds: float, backbone: dict | None) -> dict:
    """The first fields of a dense benchmark's results: what ran, where, and what it was
    given before its clock started (the composites, the backbone)."""
    return {
        "command": f"python pipeline.py --config={config_spec} --workdir=WORKDIR",
        "machine": machine(),
        "data_seconds_before": round(data_seconds, 1),
        "backbone": backbone,
        "init_from": config.model.init_from,
    }


def scratch_beside(config: str, workdir: str) -> dict:
    """`config` trained from scratch (model.init_from=None), its schedule unchanged: the
    baseline of a fine-tuned run at the same budget (train.py only, no export)."""
    epochs = train_until(
        config, workdir, ["--config.model.init_from=None"], epoch_reader(workdir),
        lambda _: False, "from scratch",
    )  # fmt: skip
    with open(os.path.join(workdir, "metrics.json")) as f:
        final = json.load(f)[-1]
    return {
        "command": f"python train.py --config={config} --workdir=WORKDIR "
        "--config.model.init_from=None",
        "epochs": epochs,
        "final_eval": {k: v for k, v in final.items() if k.startswith("eval_")},
        "train_wall_time_s": final["wall_time_s"],
    }


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
