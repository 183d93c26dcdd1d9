"""Honesty of the desktop harness: its median against LiteRT's own `litert-benchmark`.

    python benchmarks/desktop_vs_litert.py [--alpha=1.0] [--size=224] [--rounds=3]
        [--num_runs=50] [--out=benchmarks/results/desktop_vs_litert.json]

Builds MobileNetV2 (alpha, size; ImageNet head), exports float32 and int8 (calibrated on
noise: latency does not depend on the values), then for 1 and 2 threads alternates rounds
of `mnv2_tf.bench.desktop` (`benchmark.py`'s desktop path) and `litert-benchmark` (shipped
in ai-edge-litert, run as a subprocess with --result_json) on the same file. Reported: each
tool's median over its rounds and their ratio; the target is agreement within 10%.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
import numpy as np
from absl import app, flags

import common  # benchmarks/common.py: the script's own folder is on sys.path
from mnv2_tf import models
from mnv2_tf.bench import desktop
from mnv2_tf.export import convert
from mnv2_tf.models.common import DEFAULT_PREPROCESSING

_ALPHA = flags.DEFINE_float("alpha", 1.0, "Width multiplier.")
_SIZE = flags.DEFINE_integer("size", 224, "Input size.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds per tool.")
_RUNS = flags.DEFINE_integer("num_runs", 50, "Timed runs per round.")
_WARMUP = flags.DEFINE_integer("warmup_runs", 10, "Warm-up runs per round.")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "Thread counts.")
_OUT = flags.DEFINE_string("out", common.results_path("desktop_vs_litert"), "JSON output.")


def litert_benchmark(path: str, threads: int, warmup: int, runs: int) -> float:
    """Median latency in microseconds according to `litert-benchmark`."""
    executable = shutil.which("litert-benchmark") or os.path.join(
        os.path.dirname(sys.executable), "litert-benchmark"
    )
    with tempfile.TemporaryDirectory() as folder:
        result_json = os.path.join(folder, "result.json")
        subprocess.run(
            [
                executable, "--model", path, "--num_threads", str(threads),
                "--warmup_runs", str(warmup), "--num_runs", str(runs),
                "--result_json", result_json,
            ],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        with open(result_json) as f:
            latency = json.load(f)["latency"]
    return latency["median_ms"] * 1000.0


def main(argv):
    del argv
    size = _SIZE.value
    model = models.mobilenet_v2(alpha=_ALPHA.value, input_shape=(size, size, 3))
    noise = np.random.default_rng(0).uniform(-1, 1, (16, size, size, 3)).astype(np.float32)

    def representative():
        for i in range(0, len(noise), 4):
            yield [noise[i : i + 4]]

    folder = tempfile.mkdtemp(prefix="honesty_")
    files = {}
    for mode in ("float32", "int8"):
        content = convert.convert(
            model, mode, DEFAULT_PREPROCESSING,
            representative=representative if mode == "int8" else None,
        )  # fmt: skip
        files[mode] = os.path.join(folder, f"mobilenet_v2_{mode}.tflite")
        with open(files[mode], "wb") as f:
            f.write(content)

    results = {
        "machine": common.machine(),
        "alpha": _ALPHA.value,
        "input_size": size,
        "rounds": _ROUNDS.value,
        "num_runs_per_round": _RUNS.value,
        "comparison": {},
    }
    for threads in [int(t) for t in _THREADS.value]:
        for mode, path in files.items():
            ours, theirs = [], []
            for _ in range(_ROUNDS.value):
                timing = desktop.measure(path, threads, _WARMUP.value, _RUNS.value)
                ours.append(timing.median_us)
                theirs.append(litert_benchmark(path, threads, _WARMUP.value, _RUNS.value))
            ours_median, theirs_median = float(np.median(ours)), float(np.median(theirs))
            ratio = ours_median / theirs_median
            key = f"{mode}_{threads}_threads"
            results["comparison"][key] = {
                "benchmark_py_median_us": ours_median,
                "litert_benchmark_median_us": theirs_median,
                "round_medians_us": {"benchmark_py": ours, "litert_benchmark": theirs},
                "ratio": ratio,
                "within_10_percent": abs(ratio - 1.0) <= 0.10,
            }
            print(
                f"{key}: benchmark.py {ours_median:.0f} us, litert-benchmark "
                f"{theirs_median:.0f} us (ratio {ratio:.3f})",
                flush=True,
            )
    common.write_results(_OUT.value, results)


if __name__ == "__main__":
    app.run(main)
