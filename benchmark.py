"""Measure .tflite latency on the desktop LiteRT interpreter or an Android phone over adb.

    python benchmark.py --model=runs/fmnist/export/model_int8.tflite --threads=1,2
    python benchmark.py --model=a.tflite --model=b.tflite --json=lat.json --plot=lat.png \
        --export_report=runs/fmnist/export/export_report.json
    python benchmark.py --target=android --benchmark_binary=android_aarch64_benchmark_model \
        --model=model_int8.tflite --threads=1,4 --cpu_mask=f0

Prints one table for all models and thread counts, then each result in benchmark_model's
own line format so that desktop and phone figures compare line for line.
"""

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
import os

from absl import flags

from mnv2_tf import cli
from mnv2_tf.bench import android, desktop, report
from mnv2_tf.config import base_config
from mnv2_tf.errors import UserError

BENCH = base_config().bench  # the defaults the pipeline's benchmark stage uses too

_MODELS = flags.DEFINE_multi_string("model", [], "A .tflite file (repeat for several).")
_TARGET = flags.DEFINE_enum("target", "desktop", ["desktop", "android"], "Where to run.")
_THREADS = flags.DEFINE_list("threads", ["1"], "Thread counts, comma-separated.")
_WARMUP = flags.DEFINE_integer("warmup_runs", BENCH.warmup_runs, "Runs before timing.")
_RUNS = flags.DEFINE_integer("num_runs", BENCH.num_runs, "Timed runs.")
_JSON = flags.DEFINE_string("json", None, "Write the results as JSON.")
_CSV = flags.DEFINE_string("csv", None, "Write the results as CSV.")
_PLOT = flags.DEFINE_string("plot", None, "PNG: latency bars (+ accuracy vs latency).")
_REPORTS = flags.DEFINE_multi_string(
    "export_report", [], "export_report.json files whose headline figure goes into the plot."
)
_NO_XNNPACK = flags.DEFINE_bool("no_xnnpack", False, "Desktop: LiteRT's built-in kernels only.")
_SERIAL = flags.DEFINE_string("serial", None, "Android: the device (adb devices -l).")
_BINARY = flags.DEFINE_string("benchmark_binary", None, "Android: TFLite's benchmark_model.")
_CPU_MASK = flags.DEFINE_string("cpu_mask", None, "Android: taskset mask in hex (e.g. f0).")
_USE_GPU = flags.DEFINE_bool("use_gpu", False, "Android: GPU delegate.")
_USE_NNAPI = flags.DEFINE_bool("use_nnapi", False, "Android: NNAPI delegate.")
_USE_XNNPACK = flags.DEFINE_bool(
    "use_xnnpack", None, "Android: force XNNPACK on/off (default: the binary's)."
)


def _threads() -> list[int]:
    try:
        threads = [int(t) for t in _THREADS.value]
    except ValueError as e:
        raise UserError(f"--threads must be integers, got {','.join(_THREADS.value)}") from e
    bad = [t for t in threads if t < 1]
    if bad or not threads:
        raise UserError(f"--threads must be at least 1, got {','.join(_THREADS.value)}")
    return threads


def main(argv: list[str]) -> None:
    del argv
    if not _MODELS.value:
        raise UserError("no --model given; pass one or more .tflite files")
    threads = _threads()
    for path in _MODELS.value:
        desktop.check_model_file(path)
    extra: dict = {"target": _TARGET.value}
    if _TARGET.value == "android":
        if not _BINARY.value:
            raise UserError(
                "--target=android needs --benchmark_binary=PATH (TFLite's benchmark_model)"
            )
        session = android.Session(
            android.AndroidOptions(
                benchmark_binary=_BINARY.value,
                serial=_SERIAL.value,
                cpu_mask=_CPU_MASK.value,
                use_gpu=_USE_GPU.value,
                use_nnapi=_USE_NNAPI.value,
                use_xnnpack=_USE_XNNPACK.value,
            )
        )
        extra["device"] = session.facts

        def measure(path, n):
            return session.measure(path, n, _WARMUP.value, _RUNS.value)

    else:

        def measure(path, n):
            return desktop.measure(
                path, n, _WARMUP.value, _RUNS.value, xnnpack=not _NO_XNNPACK.value
            )

    timings = []
    for path in _MODELS.value:
        for n in threads:
            timing = measure(path, n)
            timings.append(timing)
            print(f"{os.path.basename(path)} ({timing.target}, {n} thread(s)):")
            print(timing.benchmark_model_lines(), flush=True)
    print()
    print(report.table(timings))
    if _JSON.value:
        report.write_json(timings, _JSON.value, extra)
    if _CSV.value:
        report.write_csv(timings, _CSV.value)
    if _PLOT.value:
        points = report.accuracy_points(timings, _REPORTS.value) if _REPORTS.value else None
        report.plot(timings, _PLOT.value, points)
        print(f"wrote {_PLOT.value}")


if __name__ == "__main__":
    cli.run(main)
