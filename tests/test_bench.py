"""benchmark.py: parsing real benchmark_model outputs, the desktop LiteRT harness, the adb
path against a stand-in adb, the no-device path against the real adb, and bad input."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mnv2_tf.bench import android, desktop, parse, report
from mnv2_tf.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUTPUTS = ROOT / "tests" / "data" / "benchmark_model"
FAKE_ADB = ROOT / "tests" / "fake_adb"
ARM64_ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x02\x00" + (183).to_bytes(2, "little")
X86_64_ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x02\x00" + (62).to_bytes(2, "little")


# --- parsing real outputs -------------------------------------------------------------


def test_parse_old_format_2018():
    r = parse.parse((OUTPUTS / "old_2018.txt").read_text())
    assert r["count"] == 50 and r["first_us"] == 137789 and r["min_us"] == 137079
    assert r["max_us"] == 143416 and r["mean_us"] == 137722 and r["std_us"] == 896
    assert r["init_us"] == 4452 and r["warmup_avg_us"] == 146161
    assert "median_us" not in r  # that binary printed no percentiles


def test_parse_old_format_with_warmup_stats():
    r = parse.parse((OUTPUTS / "old_2019.txt").read_text())
    assert r["count"] == 50 and r["mean_us"] == 115062 and r["curr_us"] == 114219
    assert r["warmup_avg_us"] == 86184.3 and r["init_us"] == 1892
    assert r["first_us"] == 91810  # the warm-up's first run, not the timed runs' (118810)


def test_parse_scientific_notation():
    r = parse.parse((OUTPUTS / "new_scientific.txt").read_text())
    assert r["mean_us"] == pytest.approx(2.95034e6) and r["warmup_avg_us"] == pytest.approx(
        3.51239e6
    )
    # "First inference" of the summary, not the stat line's first timed run (2990275).
    assert r["first_us"] == 3512391 and r["init_us"] == 17187
    assert r["memory_init_mb"] == pytest.approx(4.21094)
    assert r["memory_overall_mb"] == pytest.approx(46.0859)


def test_parse_new_format_with_percentiles_and_prefixes():
    r = parse.parse((OUTPUTS / "new_percentiles.txt").read_text())
    assert r["count"] == 1000 and r["median_us"] == 51891 and r["p5_us"] == 49620
    assert r["p95_us"] == 68628 and r["mean_us"] == 63743.2 and r["init_us"] == 119515
    assert r["warmup_avg_us"] == 58147.4
    assert r["first_us"] == 87112  # "First inference", not the timed runs' first=52162


def test_parse_peak_memory_variant():
    r = parse.parse((OUTPUTS / "peak_memory.txt").read_text())
    assert r["mean_us"] == 249684 and r["memory_overall_mb"] == pytest.approx(138.809)


def test_parse_without_timings_names_the_last_lines():
    output = "STARTING!\nERROR: Didn't find op for builtin opcode 'CONV_2D'\nBenchmarking failed.\n"
    with pytest.raises(UserError, match=r"printed no timings.*Benchmarking failed"):
        parse.parse(output)


# --- desktop ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    inputs = tf_keras.Input((16, 16, 3))
    x = tf_keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = tf_keras.layers.DepthwiseConv2D(3)(x)
    outputs = tf_keras.layers.Dense(4)(tf_keras.layers.GlobalAveragePooling2D()(x))
    model = tf_keras.Model(inputs, outputs)
    path = tmp_path_factory.mktemp("m") / "tiny model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def test_desktop_measure_reports_every_figure(tiny_tflite):
    t = desktop.measure(str(tiny_tflite), threads=2, warmup_runs=3, num_runs=25)
    assert t.count == 25 and t.threads == 2 and t.size_bytes == tiny_tflite.stat().st_size
    assert 0 < t.min_us <= t.p5_us <= t.median_us <= t.p95_us <= t.max_us
    assert t.min_us <= t.mean_us <= t.max_us and t.p90_us <= t.p95_us
    assert t.init_us > 0 and t.first_us > 0 and t.warmup_avg_us > 0
    assert t.peak_rss_mb > t.rss_delta_mb > 0
    # The benchmark_model lines read back through the parser give the same figures.
    again = parse.parse(t.benchmark_model_lines())
    assert again["count"] == 25
    assert again["median_us"] == pytest.approx(t.median_us, abs=1)
    assert again["mean_us"] == pytest.approx(t.mean_us, abs=0.1)
    assert again["init_us"] == pytest.approx(t.init_us, abs=1)


def test_summary_statistics():
    s = desktop.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["min_us"], s["median_us"], s["max_us"], s["mean_us"], s["curr_us"]) == (1, 3, 5, 3, 4)
    assert s["std_us"] == pytest.approx(np.std([1, 2, 3, 4, 5]))


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "benchmark.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_cli_table_json_csv_and_plot(tiny_tflite, tmp_path):
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    model = export_dir / "model_int8.tflite"
    shutil.copy(tiny_tflite, model)
    (export_dir / "export_report.json").write_text(
        json.dumps({"model": "tiny", "models": {"int8": {"file": model.name, "top1": 0.9}}})
    )
    result = run_cli(
        f"--model={model}", f"--model={tiny_tflite}", "--threads=1,2", "--num_runs=5",
        "--warmup_runs=1", f"--json={tmp_path / 'r.json'}", f"--csv={tmp_path / 'r.csv'}",
        f"--plot={tmp_path / 'p.png'}", f"--export_report={export_dir / 'export_report.json'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Inference timings in us: Init:") == 4
    assert "median" in result.stdout and "tiny model.tflite" in result.stdout
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [(r["threads"], os.path.basename(r["model"])) for r in results] == [
        (1, "model_int8.tflite"), (2, "model_int8.tflite"),
        (1, "tiny model.tflite"), (2, "tiny model.tflite"),
    ]  # fmt: skip
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 5
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_accuracy_points_match_reports_to_models(tiny_tflite, tmp_path):
    shutil.copy(tiny_tflite, tmp_path / "model_int8.tflite")
    (tmp_path / "export_report.json").write_text(
        json.dumps({"models": {"int8": {"file": "model_int8.tflite", "top1": 0.91}}})
    )
    t = desktop.measure(str(tmp_path / "model_int8.tflite"), 1, warmup_runs=0, num_runs=3)
    points = report.accuracy_points([t], [str(tmp_path / "export_report.json")])
    assert len(points) == 1 and points[0]["figure"] == 0.91 and points[0]["median_us"] > 0


def custom_op_model(tiny_tflite, path):
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(tiny_tflite))
    code = model.operatorCodes[0]
    code.builtinCode = code.deprecatedBuiltinCode = 32  # CUSTOM
    code.customCode = "Mnv2MissingOp"
    flatbuffer_utils.write_model(model, str(path))


def test_bad_models_and_flags(tiny_tflite, tmp_path):
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(tiny_tflite.read_bytes()[: tiny_tflite.stat().st_size // 3])
    text = tmp_path / "notes.tflite"
    text.write_text("not a model at all, just some text in a file\n")
    custom = tmp_path / "custom.tflite"
    custom_op_model(tiny_tflite, custom)
    cases = {
        str(tmp_path / "missing.tflite"): "not found",
        str(text): "is not a TFLite model",
        str(truncated): "LiteRT cannot run",
        str(custom): "Mnv2MissingOp",
    }
    for path, expected in cases.items():  # in-process: what benchmark.py calls for each model
        with pytest.raises(UserError) as error:
            desktop.check_model_file(path)
            desktop.measure(path, 1, 0, 2)
        assert expected in str(error.value) and "\n" not in str(error.value), (path, error.value)
    with pytest.raises(UserError, match="--threads must be at least 1"):
        desktop.measure(str(tiny_tflite), 0, 0, 2)
    # Through the CLI once: a one-line error and exit status 2.
    result = run_cli(f"--model={truncated}", "--num_runs=2")
    assert result.returncode == 2 and last_line(result.stderr).startswith("error: LiteRT cannot")


# --- Android, against the stand-in adb -------------------------------------------------


@pytest.fixture
def phone(tmp_path):
    """The stand-in adb first on PATH, an emulated phone's storage, and an arm64 binary."""
    root = tmp_path / "phone"
    root.mkdir()
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(ARM64_ELF + b"\x00" * 64)
    log = tmp_path / "adb.log"
    env = {
        "PATH": f"{FAKE_ADB}{os.pathsep}{os.environ['PATH']}",
        "FAKE_ADB_ROOT": str(root),
        "FAKE_ADB_LOG": str(log),
    }
    return {"root": root, "binary": binary, "log": log, "env": env, "tmp": tmp_path}


def adb_calls(phone) -> list[list[str]]:
    return [json.loads(line)["argv"] for line in phone["log"].read_text().splitlines()]


def test_android_end_to_end(phone, tiny_tflite):
    model = phone["tmp"] / "my model; touch INJECTED; 'q'.tflite"
    shutil.copy(tiny_tflite, model)
    args = [
        "--target=android", f"--benchmark_binary={phone['binary']}", f"--model={model}",
        "--threads=1,4", "--num_runs=30", "--warmup_runs=3", "--cpu_mask=f0",
        f"--json={phone['tmp'] / 'android.json'}",
    ]  # fmt: skip
    result = run_cli(*args, env=phone["env"])
    assert result.returncode == 0, result.stderr
    # Quoting: the name reached benchmark_model whole and nothing else ran on the device.
    assert not list(phone["root"].rglob("INJECTED")) and not (ROOT / "INJECTED").exists()
    bench_args = (phone["root"] / "bench_args.txt").read_text().splitlines()
    assert len(bench_args) == 2
    assert "--graph=" in bench_args[0] and "my model; touch INJECTED; 'q'.tflite" in bench_args[0]
    assert "--num_threads=4" in bench_args[1] and "--num_runs=30" in bench_args[1]
    assert "--warmup_runs=3" in bench_args[0]
    calls = adb_calls(phone)
    assert calls[0] == ["devices", "-l"]
    pushes = [c for c in calls if c[0] == "push"]
    assert sum(c[2].endswith("/benchmark_model") for c in pushes) == 1
    assert any("taskset f0" in c[1] for c in calls if c[0] == "shell")
    # The model was removed from the phone afterwards; the binary stays for next time.
    assert not list((phone["root"] / "data/local/tmp/mnv2_tf").glob("*.tflite"))
    assert (phone["root"] / "data/local/tmp/mnv2_tf/benchmark_model").exists()
    report_json = json.loads((phone["tmp"] / "android.json").read_text())
    device = report_json["device"]
    assert device["model"] == "Pixel 7" and device["android_version"] == "14"
    assert device["abi"] == "arm64-v8a" and device["soc"] == "GS201" and device["cpus"]
    first = report_json["results"][0]
    assert first["target"] == "android" and first["median_us"] == 51891
    assert first["mean_us"] == 63743.2 and first["peak_rss_mb"] == pytest.approx(61.2031)
    assert "count=30" in result.stdout and "Inference timings in us: Init: 119515" in result.stdout

    # A second run finds the same binary on the phone and does not push it again.
    phone["log"].write_text("")
    assert run_cli(*args, env=phone["env"]).returncode == 0
    assert not any(c[0] == "push" and c[2].endswith("/benchmark_model") for c in adb_calls(phone))


@pytest.mark.parametrize("mode,mean", [("old", 115062), ("scientific", 2.95034e6)])
def test_android_reads_older_binaries(phone, tiny_tflite, mode, mean, monkeypatch):
    for key, value in {**phone["env"], "FAKE_BENCH_MODE": mode}.items():
        monkeypatch.setenv(key, value)
    session = android.Session(android.AndroidOptions(benchmark_binary=str(phone["binary"])))
    t = session.measure(str(tiny_tflite), threads=1, warmup_runs=1, num_runs=50)
    assert t.mean_us == pytest.approx(mean) and t.count == 50
    assert np.isnan(t.median_us)  # not printed by those versions: unknown, not guessed


@pytest.mark.parametrize(
    "env,args,expected",
    [
        ({"FAKE_ADB_DEVICES": ""}, [], "no Android device attached"),
        (
            {"FAKE_ADB_DEVICES": "A1 device model:Pixel_7\nB2 device model:Galaxy_S23\n"},
            [],
            "several devices attached (A1 (Pixel_7), B2 (Galaxy_S23)); choose one with --serial",
        ),
        ({"FAKE_ADB_DEVICES": "A1 unauthorized usb:1-1\n"}, [], "device A1 is unauthorized"),
        ({"FAKE_ADB_DEVICES": "A1 offline\n"}, [], "device A1 is offline"),
        ({}, ["--serial=ZZZ"], "device ZZZ not attached"),
        ({"FAKE_ADB_PUSH_FAIL": "1"}, [], "adb push benchmark_model failed"),
        ({"FAKE_BENCH_MODE": "crash"}, [], "benchmark_model failed on"),
        ({"FAKE_ADB_PROPS": '{"ro.product.cpu.abi": "x86_64"}'}, [], "device's ABI is x86_64"),
    ],
)
def test_android_failures_are_one_line(phone, tiny_tflite, env, args, expected, monkeypatch):
    for key, value in {**phone["env"], **env}.items():
        monkeypatch.setenv(key, value)
    serial = args[0].split("=", 1)[1] if args else None
    with pytest.raises(UserError) as error:
        android_measure(phone["binary"], tiny_tflite, serial=serial)
    line = str(error.value)
    assert "\n" not in line and expected in line, line
    if "crash" in env.get("FAKE_BENCH_MODE", ""):
        assert "Failed to initialize the interpreter" in line


def android_measure(binary, model, serial=None):
    """What benchmark.py --target=android does for one model, in-process."""
    options = android.AndroidOptions(benchmark_binary=str(binary), serial=serial)
    return android.Session(options).measure(str(model), 1, 1, 2)


def test_android_binary_checks(phone, tiny_tflite, monkeypatch):
    for key, value in phone["env"].items():
        monkeypatch.setenv(key, value)
    wrong = phone["tmp"] / "x86_benchmark_model"
    wrong.write_bytes(X86_64_ELF + b"\x00" * 64)
    script = phone["tmp"] / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    for binary, expected in (
        (wrong, "built for x86_64 but the device's ABI is arm64-v8a"),
        (script, "is not an executable"),
        (phone["tmp"] / "nope", "benchmark binary"),
    ):
        with pytest.raises(UserError, match=re.escape(expected)):
            android_measure(binary, tiny_tflite)


def test_adb_missing(tiny_tflite, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="adb not found on PATH"):
        android_measure(tmp_path / "b", tiny_tflite)


def test_parse_devices_skips_daemon_chatter():
    output = (
        "* daemon not running; starting now at tcp:5037\n* daemon started successfully\n"
        "List of devices attached\n"
        "R58M123 device usb:1-1 product:a52q model:SM_A525F device:a52q transport_id:2\n"
        "emulator-5554 offline\n"
    )
    devices = android.parse_devices(output)
    assert [(d.serial, d.state) for d in devices] == [
        ("R58M123", "device"),
        ("emulator-5554", "offline"),
    ]
    assert devices[0].details["model"] == "SM_A525F"


def test_cpu_mask_is_validated():
    options = android.AndroidOptions(benchmark_binary="b", cpu_mask="f0; reboot")
    with pytest.raises(UserError, match="hexadecimal"):
        android.benchmark_command("/m.tflite", 1, 1, 1, options)


@pytest.mark.skipif(shutil.which("adb") is None, reason="apt-get install adb")
def test_no_device_with_the_real_adb(tiny_tflite, tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # a fresh adb key folder
    try:
        result = run_cli(
            "--target=android", f"--benchmark_binary={tmp_path / 'b'}", f"--model={tiny_tflite}",
            env=env,
        )  # fmt: skip
    finally:
        subprocess.run(["adb", "kill-server"], capture_output=True, check=False, env=env)
    assert result.returncode == 2, result.stderr
    assert "no Android device attached" in last_line(result.stderr)
