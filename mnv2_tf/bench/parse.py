"""Reads the output of TFLite's `benchmark_model`, every format it has printed.

- stat lines: `count=50 first=... curr=... min=... max=... avg=... std=...`, since 2020
  with `p5=... median=... p95=...`; the last one is the timed runs, an earlier one the
  warm-up (the oldest warm-up line is only `count=1 curr=...`). Numbers may be in
  scientific notation (`avg=2.95034e+06`); lines may carry a log prefix (`INFO: `,
  `I tflite  : `, a timestamp).
- the summary: new `Inference timings in us: Init: ..., First inference: ..., Warmup
  (avg): ..., Inference (avg): ...`; old `Average inference timings in us: Warmup: ...,
  Init: ..., no stats: ...` (or `Inference: ...`).
- memory: `Memory footprint delta from the start of the tool (MB): init=... overall=...`,
  `Peak memory footprint (MB): init=... overall=...` and `Overall peak memory footprint
  (MB) via periodic monitoring: ...`.
"""

from __future__ import annotations

import re

from mnv2_tf.errors import UserError

NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_STAT = re.compile(rf"\bcount=(?P<count>{NUMBER})(?P<rest>(?:\s+\w+={NUMBER})*)")
_FIELD = re.compile(rf"(\w+)=({NUMBER})")
_NEW_SUMMARY = re.compile(
    rf"Inference timings in us: Init: (?P<init>{NUMBER}), First inference: (?P<first>{NUMBER}), "
    rf"Warmup \(avg\): (?P<warmup>{NUMBER}), Inference \(avg\): (?P<avg>{NUMBER})"
)
_OLD_SUMMARY = re.compile(
    rf"Average inference timings in us: Warmup: (?P<warmup>{NUMBER}), Init: (?P<init>{NUMBER}), "
    rf"(?:no stats|Inference): (?P<avg>{NUMBER})"
)
_MEMORY_DELTA = re.compile(
    rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
    rf"init=(?P<init>{NUMBER}) overall=(?P<overall>{NUMBER})"
)
_PEAK_MONITORED = re.compile(
    rf"Overall peak memory footprint \(MB\) via periodic monitoring: (?P<peak>{NUMBER})"
)
# Which stat fields become which report keys (microseconds).
_STAT_KEYS = {
    "count": "count",
    "first": "first_us",
    "curr": "curr_us",
    "min": "min_us",
    "max": "max_us",
    "avg": "mean_us",
    "std": "std_us",
    "p5": "p5_us",
    "median": "median_us",
    "p95": "p95_us",
}


def parse(output: str) -> dict:
    """The figures in a `benchmark_model` output.

    Returns a dict with, where printed: count, first_us, curr_us, min_us, max_us, mean_us,
    std_us, p5_us, median_us, p95_us (the timed runs), init_us, warmup_avg_us,
    memory_init_mb, memory_overall_mb, peak_memory_mb.

    Raises:
      UserError: the output holds no timing (a crash, or not benchmark_model's output).
    """
    stats = []
    for line in output.splitlines():
        match = _STAT.search(line)
        if match and ("first=" in line or "curr=" in line):
            stats.append({k: float(v) for k, v in _FIELD.findall(line[match.start() :])})
    result: dict = {}
    if stats:
        for key, value in stats[-1].items():
            if key in _STAT_KEYS:
                result[_STAT_KEYS[key]] = value
        result["count"] = int(result["count"])
        if len(stats) >= 2 and "first" in stats[0]:
            # The warm-up's stat line comes first: its first run is the first inference.
            result["first_us"] = stats[0]["first"]
    summary = _NEW_SUMMARY.search(output) or _OLD_SUMMARY.search(output)
    if summary:
        groups = summary.groupdict()
        result["init_us"] = float(groups["init"])
        result["warmup_avg_us"] = float(groups["warmup"])
        result.setdefault("mean_us", float(groups["avg"]))
        if groups.get("first") is not None:
            # The tool's own first inference, before the warm-up: the stat line's `first=`
            # is the first of the timed runs, already warm.
            result["first_us"] = float(groups["first"])
    elif len(stats) >= 2 and "avg" in stats[0]:
        result["warmup_avg_us"] = stats[0]["avg"]
    if memory := _MEMORY_DELTA.search(output):
        result["memory_init_mb"] = float(memory["init"])
        result["memory_overall_mb"] = float(memory["overall"])
    if peak := _PEAK_MONITORED.search(output):
        result["peak_memory_mb"] = float(peak["peak"])
    if "mean_us" not in result:
        raise UserError("benchmark_model printed no timings" + tail_of(output))
    return result


def tail_of(output: str, lines: int = 3) -> str:
    last = [ln.strip() for ln in output.strip().splitlines() if ln.strip()][-lines:]
    return f"; its last output: {' | '.join(last)}" if last else "; it printed nothing"
