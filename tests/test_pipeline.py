"""pipeline.py: the report is the stage outputs; re-runs skip finished stages; a killed run
resumes with one training run's worth of epochs."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mnv2_tf import fileio
from mnv2_tf.config import load_file
from mnv2_tf.errors import UserError
from mnv2_tf.pipeline import report, stages
from tests.conftest import read_only_tree
from tests.test_train import FASHION_MNIST, TINY, needs_fmnist

ROOT = pathlib.Path(__file__).resolve().parents[1]


def fake_run(name, alpha, top1s, int8_top1, medians):
    metrics = [
        {"epoch": i + 1, "train_loss": 1.0 / (i + 1), "eval_loss": 1.2 / (i + 1), "eval_top1": t,
         "eval_examples": 10000, "wall_time_s": 60.0 * (i + 1)}
        for i, t in enumerate(top1s)
    ]  # fmt: skip
    export = {
        "macs": int(alpha * 10e6),
        "params": int(alpha * 1e6),
        "models": {
            "float32": {"file": "model_float32.tflite", "size_bytes": 4096, "top1": top1s[-1],
                        "keras_top1": top1s[-1], "agreement": 1.0, "check": "passed"},
            "int8": {"file": "model_int8.tflite", "size_bytes": 1024, "top1": int8_top1,
                     "keras_top1": top1s[-1], "agreement": 0.99, "check": "passed"},
        },
    }  # fmt: skip
    bench = []
    for mode, (one, two) in medians.items():
        for threads, median in ((1, one), (2, two)):
            bench.append({"mode": mode, "target": "desktop", "threads": threads,
                          "median_us": median, "p90_us": median * 1.1})  # fmt: skip
    return {
        "workdir": f"/runs/{name}",
        "task": "classification",
        "config": {"model": "mobilenet_v2", "alpha": alpha, "input_size": 32, "epochs": 2},
        "metrics": metrics,
        "export": export,
        "benchmark": bench,
    }


def test_report_is_built_from_the_stage_outputs(tmp_path):
    runs = [
        fake_run("alpha0.35", 0.35, [0.80, 0.9012], 0.8990, {"float32": (1500, 900), "int8": (700, 450)}),
        fake_run("alpha1.0", 1.0, [0.85, 0.9250], 0.9201, {"float32": (6000, 3300), "int8": (2500, 1400)}),
    ]  # fmt: skip
    built = report.write(runs, str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["rows"] == built["rows"] and len(saved["rows"]) == 4
    row = next(r for r in saved["rows"] if r["run"] == "alpha1.0" and r["mode"] == "int8")
    assert row["top1"] == row["headline"] == 0.9201 and row["keras_top1"] == 0.9250
    assert row["median_us_1t"] == 2500 and row["median_us_2t"] == 1400 and row["macs"] == 10_000_000
    # The Markdown line of that model, cell by cell.
    line = next(ln for ln in md.splitlines() if ln.startswith("| alpha1.0 | model_int8.tflite"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["alpha1.0", "model_int8.tflite", "-", "1.0", "10.0", "1.000", "92.50", "92.01",
                     "99.00", "2.50", "2.75", "1.40", "1.54"]  # fmt: skip
    assert "final eval top-1 90.12% on 10000 images" in md
    for png in ("training.png", "tradeoff.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in md


def test_sweep_grid():
    assert stages.parse_sweep(None) == [{}]
    grid = stages.parse_sweep("alpha:0.35,1.0;input_size:32,64")
    assert grid == [
        {"alpha": 0.35, "input_size": 32}, {"alpha": 0.35, "input_size": 64},
        {"alpha": 1.0, "input_size": 32}, {"alpha": 1.0, "input_size": 64},
    ]  # fmt: skip
    assert stages.run_name(grid[1]) == "alpha0.35_input_size64"
    with pytest.raises(UserError, match="choose from alpha"):
        stages.parse_sweep("depth:1,2")
    with pytest.raises(UserError, match="FIELD:V1,V2"):
        stages.parse_sweep("alpha")


# A tiny run that learns enough for int8 to agree with it (a model that predicts one class
# everywhere fails the export's self-check, as it should).
LEARNS = {
    **TINY,
    "data.max_train_examples": 2048,
    "train.steps_per_epoch": 20,
    "train.learning_rate": 0.05,
    "train.warmup_epochs": 0.5,
    "train.ema_decay": 0.9,
    "model.bn_momentum": 0.9,
}


PIPELINE_SETTINGS = {
    "export.modes": "float32,int8",
    "bench.threads": "1",
    "bench.num_runs": 5,
    "bench.warmup_runs": 1,
}


def pipeline_cmd(workdir, *extra):
    overrides = [f"--config.{k}={v}" for k, v in {**LEARNS, **PIPELINE_SETTINGS}.items()]
    return [
        sys.executable, "pipeline.py", "--config=configs/fashion_mnist.py", f"--workdir={workdir}",
        *overrides, *extra,
    ]  # fmt: skip


@needs_fmnist
def test_pipeline_runs_every_stage_and_skips_them_when_run_again(tmp_path):
    workdir = tmp_path / "run"
    # The IDX files as a user holds them (a copy, immutable while the job reads them), and two
    # pipeline.py runs started at once on one workdir: one runs, the other stops in one line.
    data = tmp_path / "fmnist"
    shutil.copytree(FASHION_MNIST, data)
    cmd = pipeline_cmd(workdir, f"--config.data.data_dir={data}")
    with read_only_tree(data):
        both = [
            subprocess.Popen(
                cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        done = [(p.wait(timeout=900), *p.communicate()) for p in both]
    codes = sorted(code for code, _, _ in done)
    assert codes == [0, 2], [err[-2000:] for _, _, err in done]
    first = next(d for d in done if d[0] == 0)
    refused = next(d for d in done if d[0] == 2)[2].strip().splitlines()[-1]
    assert re.match(
        rf"error: workdir {workdir} is in use by pipeline.py \(pid \d+ on .*\): wait for it to end",
        refused,
    ), refused
    assert not (workdir / fileio.LOCK_NAME).exists()  # released by the run that held it
    for name in ("report.md", "report.json", "training.png", "tradeoff.png", "benchmark.json",
                 "export/model_int8.tflite", "export/export_report.json", "final/model.h5"):  # fmt: skip
        assert (workdir / name).exists(), name
    md = (workdir / "report.md").read_text()
    assert "model_int8.tflite" in md and "model_float32.tflite" in md
    # Both files load unchanged in MediaPipe Tasks (the defaults: uint8 pixels, metadata).
    for name in ("model_float32.tflite", "model_int8.tflite"):
        assert (
            next(ln for ln in md.splitlines() if f"| {name} |" in ln).split("|")[3].strip()
            == "ready"
        )
    assert "wrote" in first[1], first[2][-2000:]
    first_rows = json.loads((workdir / "report.json").read_text())["rows"]
    # Again, in-process with the same config: every stage is found done.
    config = load_file(str(ROOT / "configs" / "fashion_mnist.py"))
    for key, value in {**LEARNS, **PIPELINE_SETTINGS}.items():
        section, field = key.split(".")
        config[section][field] = value
    config.data.data_dir = str(data)
    lines = []
    report.write(stages.run(config, str(workdir), log=lines.append), str(workdir))
    for stage in ("[train]", "[export]", "[benchmark]"):
        assert f"{stage} {workdir}: done, skipped" in lines, lines
    # Nothing was redone, so the report holds the same figures.
    assert json.loads((workdir / "report.json").read_text())["rows"] == first_rows
    # A changed export setting redoes the export.
    config.export.calibration_steps = 3
    lines.clear()
    stages.stage_export(config, str(workdir), log=lines.append)
    assert f"[export] {workdir}: float32,int8" in lines, lines
    assert len(json.loads((workdir / "metrics.json").read_text())) == LEARNS["train.epochs"]


@pytest.mark.slow  # the trainer's own SIGKILL test runs in the default suite
@needs_fmnist
def test_killed_pipeline_resumes_with_one_runs_worth_of_epochs(tmp_path):
    workdir = tmp_path / "run"
    epochs = 3
    cmd = pipeline_cmd(
        workdir, f"--config.train.epochs={epochs}", "--config.train.steps_per_epoch=6"
    )
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    metrics = workdir / "metrics.json"
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and json.loads(metrics.read_text() or "[]"):
            break
        time.sleep(0.5)
    assert process.poll() is None, "the pipeline finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = len(json.loads(metrics.read_text()))
    assert 1 <= done < epochs
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    history = json.loads(metrics.read_text())
    assert [m["epoch"] for m in history] == list(range(1, epochs + 1))
    assert (workdir / "report.md").exists()


def test_bad_stage_settings_fail_before_training(tmp_path):
    from mnv2_tf.config import base_config

    for section, field, value, expected in (
        ("export", "modes", "float32,int4", "unknown quantization mode int4 in export.modes"),
        ("export", "image_input", "rgb", "export.image_input must be uint8 or empty"),
        ("bench", "threads", "1,two", "bench.threads: '1,two' is not a comma-separated list"),
        ("bench", "threads", "0", "bench.threads must be whole numbers >= 1"),
    ):
        config = base_config()
        config[section][field] = value
        with pytest.raises(UserError, match=expected):
            stages.run(config, str(tmp_path / "run"))
        assert not (tmp_path / "run").exists()  # nothing trained, nothing written
