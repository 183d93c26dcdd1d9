"""One report format for desktop and phone: a table, JSON, CSV and plots."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os

from mnv2_tf import fileio
from mnv2_tf.bench.desktop import Timing

COLUMNS = (
    ("model", "model"),
    ("target", "target"),
    ("threads", "thr"),
    ("size_kb", "size KiB"),
    ("init_us", "init"),
    ("first_us", "first"),
    ("warmup_avg_us", "warmup avg"),
    ("min_us", "min"),
    ("median_us", "median"),
    ("mean_us", "mean"),
    ("p90_us", "p90"),
    ("p95_us", "p95"),
    ("std_us", "std"),
    ("peak_rss_mb", "peak MB"),
)


def _row(t: Timing) -> dict:
    row = dataclasses.asdict(t)
    row["model"] = os.path.basename(t.model)
    row["size_kb"] = t.size_bytes / 1024
    return row


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.1f}" if value < 1000 else f"{value:.0f}"
    return str(value)


def table(timings: list[Timing]) -> str:
    """A fixed-width table (times in microseconds)."""
    rows = [[_fmt(_row(t)[key]) for key, _ in COLUMNS] for t in timings]
    headers = [title for _, title in COLUMNS]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines) + "\n(times in microseconds)"


def write_json(timings: list[Timing], path: str, extra: dict | None = None) -> None:
    payload = {**(extra or {}), "results": [dataclasses.asdict(t) for t in timings]}
    _atomic_write(path, json.dumps(payload, indent=2, allow_nan=True))


def write_csv(timings: list[Timing], path: str) -> None:
    buffer = io.StringIO()
    fields = list(dataclasses.asdict(timings[0])) if timings else ["model"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for t in timings:
        writer.writerow(dataclasses.asdict(t))
    _atomic_write(path, buffer.getvalue())


def _atomic_write(path: str, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def accuracy_points(timings: list[Timing], report_paths: list[str]) -> list[dict]:
    """(latency, headline figure) of every benchmarked model that an export_report.json
    measured; the figure is the report's `headline` (top-1 for a classifier)."""
    by_path = {}
    for t in timings:
        by_path.setdefault(os.path.realpath(t.model), []).append(t)
    points = []
    for report_path in report_paths:
        report = fileio.read_json(report_path)
        folder = os.path.dirname(os.path.abspath(report_path))
        headline = report.get("headline", {"key": "top1", "label": "top-1"})
        for mode, entry in report.get("models", {}).items():
            for t in by_path.get(os.path.realpath(os.path.join(folder, entry["file"])), []):
                if entry.get(headline["key"]) is None:
                    continue
                points.append(
                    {
                        "label": f"{report.get('model', '')} {mode}".strip(),
                        "model": t.model,
                        "threads": t.threads,
                        "target": t.target,
                        "median_us": t.median_us if not math.isnan(t.median_us) else t.mean_us,
                        "figure": entry[headline["key"]],
                        "figure_label": headline["label"],
                        "macs": report.get("macs"),
                    }
                )
    return points


def plot(timings: list[Timing], path: str, points: list[dict] | None = None) -> None:
    """Median latency bars with p5-p95 whiskers; beside them, top-1 against latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if points else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    labels = [f"{os.path.basename(t.model)}\n{t.target} {t.threads}T" for t in timings]
    medians = [(t.median_us if not math.isnan(t.median_us) else t.mean_us) / 1000 for t in timings]
    low = [
        max(0.0, m - (t.p5_us / 1000 if not math.isnan(t.p5_us) else m))
        for m, t in zip(medians, timings, strict=True)
    ]
    high = [
        max(0.0, (t.p95_us / 1000 if not math.isnan(t.p95_us) else m) - m)
        for m, t in zip(medians, timings, strict=True)
    ]
    ax.bar(range(len(timings)), medians, yerr=[low, high], capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(timings)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("median latency (ms), whiskers p5-p95")
    ax.set_title("Latency")
    if points:
        ax = axes[0][1]
        for threads in sorted({p["threads"] for p in points}):
            chosen = [p for p in points if p["threads"] == threads]
            ax.scatter(
                [p["median_us"] / 1000 for p in chosen],
                [100 * p["figure"] for p in chosen],
                label=f"{threads} thread(s)",
            )
            for p in chosen:
                ax.annotate(p["label"], (p["median_us"] / 1000, 100 * p["figure"]), fontsize=7)
        ax.set_xlabel("median latency (ms)")
        ax.set_ylabel(f"{' / '.join(sorted({p['figure_label'] for p in points}))} (%)")
        ax.set_title("Accuracy vs latency")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_write_bytes(path, fileio.png_bytes(fig, dpi=120))


def _atomic_write_bytes(path: str, content: bytes) -> None:
    folder = os.path.dirname(path)
    if folder:
        fileio.makedirs(folder)
    fileio.write_bytes_atomic(path, content)
