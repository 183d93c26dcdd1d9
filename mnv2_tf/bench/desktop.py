"""Latency of a `.tflite` model on this machine's LiteRT interpreter.

Each (model, threads) measurement runs in a fresh Python process that imports only numpy
and LiteRT, so its resident-memory figures are the interpreter's and not those of
TensorFlow or of a previously loaded model. The timing follows `benchmark_model`:
interpreter creation + tensor allocation ("init"), the first inference, `warmup_runs`
more, then `num_runs` timed `invoke()` calls on random inputs of the model's own shapes
and types.

    python -m mnv2_tf.bench.desktop MODEL.tflite THREADS WARMUP RUNS XNNPACK
prints one JSON object (the worker; `measure` is the API).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

from mnv2_tf.errors import UserError


@dataclasses.dataclass
class Timing:
    """One model at one thread count, in microseconds (memory in MB)."""

    model: str
    threads: int
    xnnpack: bool
    size_bytes: int
    init_us: float
    first_us: float
    warmup_avg_us: float
    count: int
    min_us: float
    max_us: float
    mean_us: float
    median_us: float
    p5_us: float
    p90_us: float
    p95_us: float
    std_us: float
    curr_us: float  # the last run, as benchmark_model prints it
    peak_rss_mb: float
    rss_delta_mb: float  # peak minus the process before the model was loaded
    target: str = "desktop"

    def benchmark_model_lines(self) -> str:
        """The same numbers in `benchmark_model`'s own format."""
        return (
            f"count={self.count} first={self.first_us:.0f} curr={self.curr_us:.0f} "
            f"min={self.min_us:.0f} max={self.max_us:.0f} avg={self.mean_us:.1f} "
            f"std={self.std_us:.0f} p5={self.p5_us:.0f} median={self.median_us:.0f} "
            f"p95={self.p95_us:.0f}\n"
            f"Inference timings in us: Init: {self.init_us:.0f}, First inference: "
            f"{self.first_us:.0f}, Warmup (avg): {self.warmup_avg_us:.1f}, "
            f"Inference (avg): {self.mean_us:.1f}"
        )


def summarize(times_us: list[float]) -> dict:
    """count/min/max/mean/median/p5/p90/p95/std/curr of a list of run times."""
    t = np.asarray(times_us, np.float64)
    return {
        "count": len(t),
        "min_us": float(t.min()),
        "max_us": float(t.max()),
        "mean_us": float(t.mean()),
        "median_us": float(np.median(t)),
        "p5_us": float(np.percentile(t, 5)),
        "p90_us": float(np.percentile(t, 90)),
        "p95_us": float(np.percentile(t, 95)),
        "std_us": float(t.std()),
        "curr_us": float(t[-1]),
    }


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process, in MB."""
    import resource

    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    with open("/proc/self/statm") as f:
        current_pages = int(f.read().split()[1])
    return current_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, peak_kb / 1024


def _random_input(detail: dict, rng: np.random.Generator) -> np.ndarray:
    shape = [max(1, int(d)) for d in detail["shape"]]
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return rng.uniform(-1, 1, shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -128), min(info.max, 255) + 1, shape).astype(dtype)


def run_worker(path: str, threads: int, warmup: int, runs: int, xnnpack: bool) -> dict:
    """The measurement itself (in the worker process)."""
    from ai_edge_litert import interpreter as litert

    baseline, _ = _rss_mb()
    resolver = (
        litert.OpResolverType.AUTO
        if xnnpack
        else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    start = time.perf_counter()
    interpreter = litert.Interpreter(
        model_path=path, num_threads=threads, experimental_op_resolver_type=resolver
    )
    interpreter.allocate_tensors()
    init_us = (time.perf_counter() - start) * 1e6
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], _random_input(detail, rng))

    def once() -> float:
        t0 = time.perf_counter()
        interpreter.invoke()
        return (time.perf_counter() - t0) * 1e6

    first_us = once()
    warm = [once() for _ in range(warmup)]
    times = [once() for _ in range(runs)]
    _, peak = _rss_mb()
    return {
        "init_us": init_us,
        "first_us": first_us,
        "warmup_avg_us": float(np.mean(warm)) if warm else first_us,
        **summarize(times),
        "peak_rss_mb": peak,
        "rss_delta_mb": peak - baseline,
    }


def measure(
    path: str,
    threads: int,
    warmup_runs: int,
    num_runs: int,
    xnnpack: bool = True,
    timeout: float = 3600,
) -> Timing:
    """Benchmarks `path` in a fresh process; one-line UserError if the model will not run."""
    check_model_file(path)
    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    if num_runs < 1 or warmup_runs < 0:
        raise UserError("--num_runs must be at least 1 and --warmup_runs at least 0")
    args = [str(a) for a in (path, threads, warmup_runs, num_runs, int(xnnpack))]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "mnv2_tf.bench.desktop", *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
        detail = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), "")
        detail = detail or (lines[-1] if lines else f"exit status {result.returncode}")
        raise UserError(f"LiteRT cannot run {path}: {detail.strip()[:300]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return Timing(
        model=path,
        threads=threads,
        xnnpack=xnnpack,
        size_bytes=os.path.getsize(path),
        **figures,
    )


TFLITE_IDENTIFIER = b"TFL3"


def check_model_file(path: str) -> None:
    """A one-line error for a missing, empty, truncated or non-TFLite file."""
    if not os.path.isfile(path):
        raise UserError(f"model file {path} not found; pass the path of a .tflite file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if size < 16 or head[4:8] != TFLITE_IDENTIFIER:
        raise UserError(
            f"{path} is not a TFLite model (no TFL3 flatbuffer identifier); "
            "export one with export_tflite.py"
        )


def _main(argv: list[str]) -> None:
    path, threads, warmup, runs, xnnpack = argv
    figures = run_worker(path, int(threads), int(warmup), int(runs), bool(int(xnnpack)))
    print(json.dumps(figures))


if __name__ == "__main__":
    _main(sys.argv[1:])
