"""The main job: train -> export -> evaluate -> benchmark, for one config or a sweep.

The settings of every stage are the config's (`export`, `bench` sections). Each stage writes
its outputs into the run's workdir (held by this job alone: `fileio.workdir_lock`) and is
skipped when they are already there and complete, so re-running the same command after an
interruption only redoes what was lost: an interrupted training resumes from its checkpoint
(the trainer's own resume), a finished export or benchmark is read back.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time

import ml_collections

from mnv2_tf import config as config_lib
from mnv2_tf import fileio
from mnv2_tf.bench import desktop
from mnv2_tf.errors import UserError
from mnv2_tf.export import evaluate, exporter
from mnv2_tf.export import run as run_lib
from mnv2_tf.train import trainer

SWEEP_FIELDS = {"alpha": ("model", "alpha", float), "input_size": ("model", "input_size", int),
                "model": ("model", "name", str)}  # fmt: skip


def threads_of(config) -> tuple[int, ...]:
    threads = config_lib.parse_list(config.bench.threads, int, field="bench.threads")
    if not threads or min(threads) < 1:
        raise UserError(f"bench.threads must be whole numbers >= 1, got {config.bench.threads!r}")
    return threads


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
    metrics = fileio.read_json(os.path.join(workdir, "metrics.json"), [])
    return (
        fileio.exists(os.path.join(workdir, "final", "model.h5"))
        and len(metrics) >= config.train.epochs
    )


def stage_train(config, workdir: str, log=print) -> list[dict]:
    if training_done(workdir, config):
        log(f"[train] {workdir}: done, skipped")
    else:
        log(f"[train] {workdir}")
        trainer.train(config, workdir)
    return fileio.read_json(os.path.join(workdir, "metrics.json"), [])


def stage_export(config, workdir: str, log=print) -> dict:
    settings = exporter.settings_of(config)
    path = os.path.join(workdir, "export", "export_report.json")
    done = fileio.read_json(path)
    weights = os.path.join(workdir, "final", "model.h5")
    if (
        done
        # Any changed setting (modes, io_type, image_input, qat_epochs, ...) redoes the export.
        and all(done.get("options", {}).get(k) == v for k, v in settings.to_dict().items())
        and set(exporter.modes_of(settings)) <= set(done.get("models", {}))
        and not any(
            exporter.check_failed(m.get("check", "failed")) for m in done["models"].values()
        )
        and fileio.mtime(path) >= fileio.mtime(weights)  # not older than the model
    ):
        log(f"[export] {workdir}: done, skipped")
        return done
    log(f"[export] {workdir}: {settings.modes}")
    return exporter.export(workdir, config.export.to_dict(), log=log)


def stage_benchmark(config, workdir: str, export_report: dict, android=None, log=print):
    """Desktop latency of every exported model at each of `bench.threads` (and the phone's,
    with an `android.Session`)."""
    path = os.path.join(workdir, "benchmark.json")
    threads = threads_of(config)
    settings = {
        "threads": list(threads),
        "warmup_runs": config.bench.warmup_runs,
        "num_runs": config.bench.num_runs,
        "android": android is not None,
        # A re-export changes the files: their sizes and the export time mark this one.
        "files": sorted([m["file"], m["size_bytes"]] for m in export_report["models"].values()),
        "export_report_mtime": fileio.mtime(os.path.join(workdir, "export", "export_report.json")),
    }
    done = fileio.read_json(path)
    if done and done.get("settings") == settings:
        log(f"[benchmark] {workdir}: done, skipped")
        return done["results"]
    results = []
    folder = os.path.join(workdir, "export")
    runs = (config.bench.warmup_runs, config.bench.num_runs)
    for mode, entry in export_report["models"].items():
        model_path = os.path.join(folder, entry["file"])
        for n in threads:
            log(f"[benchmark] {entry['file']}, {n} thread(s)")
            timing = desktop.measure(model_path, n, *runs)
            results.append({"mode": mode, **dataclasses.asdict(timing)})
            if android is not None:
                timing = android.measure(model_path, n, *runs)
                results.append({"mode": mode, **dataclasses.asdict(timing)})
    fileio.write_json_atomic(path, {"settings": settings, "results": results})
    return results


EXAMPLE_IMAGES = 8


def stage_examples(workdir: str, export_report: dict, log=print) -> str | None:
    """examples.png: what the deployed model (the integer one when there is one) does on
    the first eval images, as the task draws it (`Task.draws_examples`); else None."""
    run = run_lib.read(workdir)
    task, preprocessing = run.task, run.preprocessing
    if not task.draws_examples:
        return None
    models = export_report["models"]
    mode = next((m for m in ("int8", "qat", "float32") if m in models), next(iter(models)))
    data_cfg = run.config.data.copy_and_resolve_references()
    data_cfg.max_eval_examples = EXAMPLE_IMAGES
    data_cfg.cache = False
    ds, _ = task.dataset(
        preprocessing, data_cfg.eval_split, training=False, batch_size=EXAMPLE_IMAGES,
        data_cfg=data_cfg,
    )  # fmt: skip
    batch = next(ds.as_numpy_iterator())
    batch = {k: v[batch["valid"] > 0] for k, v in batch.items()}
    content = fileio.read_bytes(os.path.join(workdir, "export", models[mode]["file"]))
    raw = bool(export_report.get("options", {}).get("image_input"))
    runner = evaluate.Runner(content, preprocessing, raw_pixels=raw)
    images = evaluate.on_pixel_grid(batch["image"], preprocessing) if raw else batch["image"]
    png = task.examples_png(batch, runner(images), preprocessing)
    path = os.path.join(workdir, "examples.png")
    fileio.write_bytes_atomic(path, png)
    log(f"[examples] {path} ({models[mode]['file']})")
    return path


def run_one(config, workdir: str, android=None, log=print) -> dict:
    """All stages of one run; returns what the report needs."""
    start = time.time()
    metrics = stage_train(config, workdir, log)
    export_report = stage_export(config, workdir, log)
    bench = stage_benchmark(config, workdir, export_report, android, log)
    examples = stage_examples(workdir, export_report, log)
    return {
        "workdir": workdir,
        "task": config.task,
        "config": {
            "model": config.model.name,
            "alpha": config.model.alpha,
            "input_size": config.model.input_size,
            "epochs": config.train.epochs,
        },
        "metrics": metrics,
        # Where training started (model.init_from, resolved; a named backbone's own figures).
        "init": config_lib.load_saved(workdir)[1].get("init"),
        "export": export_report,
        "benchmark": bench,
        "examples_png": examples,
        "seconds_this_invocation": time.time() - start,
    }


def run(config, workdir: str, sweep: str | None = None, android=None, log=print) -> list[dict]:
    """The whole job: one run per point of the sweep (one run without a sweep).

    Args:
      config: the experiment config (every stage's settings).
      workdir: the output folder (one sub-folder per sweep point).
      sweep: e.g. "alpha:0.35,0.5;input_size:32,64".
      android: an `android.Session`, to add the phone's latency.
    """
    grid = parse_sweep(sweep)
    exporter.settings_of(config)  # bad export settings fail before hours of training
    threads_of(config)
    fileio.makedirs(workdir)
    # One pipeline per workdir: a second one (another terminal, another Colab runtime on the
    # same Drive folder) stops with one line naming this one.
    with fileio.workdir_lock(workdir, "pipeline.py"):
        runs = []
        for overrides in grid:
            run_dir = (
                workdir
                if len(grid) == 1 and not overrides
                else os.path.join(workdir, run_name(overrides))
            )
            runs.append(run_one(apply(config, overrides), run_dir, android, log))
        fileio.write_json_atomic(
            os.path.join(workdir, "pipeline_runs.json"), json.loads(json.dumps(runs))
        )
    return runs
