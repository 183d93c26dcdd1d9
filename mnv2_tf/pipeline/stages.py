"""The main job: train -> export -> evaluate -> benchmark, for one config or a sweep.

Each stage writes its outputs into the run's workdir and is skipped when they are already
there and complete, so re-running the same command after an interruption only redoes what
was lost: an interrupted training resumes from its checkpoint (the trainer's own resume),
a finished export or benchmark is read back.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time

import ml_collections

from mnv2_tf.bench import desktop
from mnv2_tf.errors import UserError
from mnv2_tf.export import exporter
from mnv2_tf.train import trainer
from mnv2_tf.train.trainer import read_json, write_json_atomic

SWEEP_FIELDS = {"alpha": ("model", "alpha", float), "input_size": ("model", "input_size", int),
                "model": ("model", "name", str)}  # fmt: skip


@dataclasses.dataclass
class Options:
    modes: tuple[str, ...] = ("float32", "int8", "qat")
    threads: tuple[int, ...] = (1, 2)
    warmup_runs: int = 10
    num_runs: int = 50
    qat_epochs: float = 1.0
    calibration_steps: int = 16
    per_tensor: bool = False
    android: object | None = None  # an android.Session, to add the phone's latency


def parse_sweep(spec: str | None) -> list[dict]:
    """`alpha:0.35,0.5;input_size:32,64` -> the grid of overrides (one dict per run)."""
    grid: list[dict] = [{}]
    if not spec:
        return grid
    for part in spec.split(";"):
        if ":" not in part:
            raise UserError(f"--sweep part {part!r} is not FIELD:V1,V2 (e.g. alpha:0.35,0.5)")
        field, values = part.split(":", 1)
        field = field.strip()
        if field not in SWEEP_FIELDS:
            raise UserError(f"--sweep over {field!r}: choose from {', '.join(SWEEP_FIELDS)}")
        kind = SWEEP_FIELDS[field][2]
        try:
            parsed = [kind(v) for v in values.split(",") if v.strip()]
        except ValueError as e:
            raise UserError(f"--sweep {field}: {e}") from e
        grid = [{**g, field: v} for g in grid for v in parsed]
    return grid


def run_name(overrides: dict) -> str:
    return "_".join(f"{k}{v}" for k, v in overrides.items()) or "run"


def apply(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    config = copy.deepcopy(config)
    with config.unlocked():
        for field, value in overrides.items():
            section, key, _ = SWEEP_FIELDS[field]
            config[section][key] = value
        if config.model.name == "mobilenet_v1":
            # V1 has no inverted residual options; the stride layout carries over.
            config.model.linear_bottleneck = True
            config.model.shortcut = "bottleneck"
            config.model.expansion = None
    return config


def training_done(workdir: str, config) -> bool:
    metrics = read_json(os.path.join(workdir, "metrics.json"), []) or []
    return (
        os.path.exists(os.path.join(workdir, "final", "model.h5"))
        and len(metrics) >= config.train.epochs
    )


def stage_train(config, workdir: str, log=print) -> list[dict]:
    if training_done(workdir, config):
        log(f"[train] {workdir}: done, skipped")
    else:
        log(f"[train] {workdir}")
        trainer.train(config, workdir)
    return read_json(os.path.join(workdir, "metrics.json"), [])


def stage_export(workdir: str, options: Options, log=print) -> dict:
    path = os.path.join(workdir, "export", "export_report.json")
    done = read_json(path)
    weights = os.path.join(workdir, "final", "model.h5")
    if (
        done
        and set(options.modes) <= set(done.get("models", {}))
        and done.get("options", {}).get("per_tensor", False) == options.per_tensor
        and not any(
            exporter.check_failed(m.get("check", "failed")) for m in done["models"].values()
        )
        and os.path.getmtime(path) >= os.path.getmtime(weights)  # not older than the model
    ):
        log(f"[export] {workdir}: done, skipped")
        return done
    log(f"[export] {workdir}: {', '.join(options.modes)}")
    return exporter.export(
        workdir,
        exporter.Options(
            modes=options.modes,
            qat_epochs=options.qat_epochs,
            calibration_steps=options.calibration_steps,
            per_tensor=options.per_tensor,
        ),
        log=log,
    )


def stage_benchmark(workdir: str, export_report: dict, options: Options, log=print) -> list[dict]:
    path = os.path.join(workdir, "benchmark.json")
    settings = {
        "threads": list(options.threads),
        "warmup_runs": options.warmup_runs,
        "num_runs": options.num_runs,
        "android": options.android is not None,
        # A re-export changes the files: their sizes and the export time mark this one.
        "files": sorted([m["file"], m["size_bytes"]] for m in export_report["models"].values()),
        "export_report_mtime": os.path.getmtime(
            os.path.join(workdir, "export", "export_report.json")
        ),
    }
    done = read_json(path)
    if done and done.get("settings") == settings:
        log(f"[benchmark] {workdir}: done, skipped")
        return done["results"]
    results = []
    folder = os.path.join(workdir, "export")
    for mode, entry in export_report["models"].items():
        model_path = os.path.join(folder, entry["file"])
        for threads in options.threads:
            log(f"[benchmark] {entry['file']}, {threads} thread(s)")
            timing = desktop.measure(model_path, threads, options.warmup_runs, options.num_runs)
            results.append({"mode": mode, **dataclasses.asdict(timing)})
            if options.android is not None:
                timing = options.android.measure(
                    model_path, threads, options.warmup_runs, options.num_runs
                )
                results.append({"mode": mode, **dataclasses.asdict(timing)})
    write_json_atomic(path, {"settings": settings, "results": results})
    return results


def run_one(config, workdir: str, options: Options, log=print) -> dict:
    """All stages of one run; returns what the report needs."""
    start = time.time()
    metrics = stage_train(config, workdir, log)
    export_report = stage_export(workdir, options, log)
    bench = stage_benchmark(workdir, export_report, options, log)
    return {
        "workdir": workdir,
        "config": {
            "model": config.model.name,
            "alpha": config.model.alpha,
            "input_size": config.model.input_size,
            "epochs": config.train.epochs,
        },
        "metrics": metrics,
        "export": export_report,
        "benchmark": bench,
        "seconds_this_invocation": time.time() - start,
    }


def run(config, workdir: str, sweep: str | None, options: Options, log=print) -> list[dict]:
    """The whole job: one run per point of the sweep (one run without a sweep)."""
    grid = parse_sweep(sweep)
    runs = []
    for overrides in grid:
        run_dir = (
            workdir
            if len(grid) == 1 and not overrides
            else os.path.join(workdir, run_name(overrides))
        )
        runs.append(run_one(apply(config, overrides), run_dir, options, log))
    write_json_atomic(os.path.join(workdir, "pipeline_runs.json"), json.loads(json.dumps(runs)))
    return runs
