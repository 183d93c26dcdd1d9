"""The pipeline's report: report.md, report.json and PNG plots, from the stage outputs.

Every figure in the report is copied from a stage output (metrics.json, export_report.json,
benchmark.json); nothing is recomputed, so the report and the files it summarizes agree.
"""

from __future__ import annotations

import math
import os

from mnv2_tf.train.trainer import write_json_atomic, write_text_atomic


def rows(runs: list[dict]) -> list[dict]:
    """One row per (run, exported model): size, MACs, params, top-1s, agreement, latency."""
    table = []
    for run in runs:
        export = run["export"]
        for mode, entry in export["models"].items():
            row = {
                "run": os.path.basename(os.path.normpath(run["workdir"])),
                "model": run["config"]["model"],
                "alpha": run["config"]["alpha"],
                "input_size": run["config"]["input_size"],
                "mode": mode,
                "file": entry["file"],
                "size_kb": entry["size_bytes"] / 1024,
                "macs": export.get("macs"),
                "params": export.get("params"),
                "keras_top1": entry.get("keras_top1"),
                "tflite_top1": entry.get("top1"),
                "agreement": entry.get("agreement"),
            }
            for timing in run["benchmark"]:
                if timing["mode"] != mode:
                    continue
                prefix = "" if timing["target"] == "desktop" else f"{timing['target']}_"
                row[f"{prefix}median_us_{timing['threads']}t"] = timing["median_us"]
                row[f"{prefix}p90_us_{timing['threads']}t"] = timing["p90_us"]
            table.append(row)
    return table


def _ms(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value / 1000:.2f}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown(runs: list[dict], table: list[dict], plots: dict[str, str]) -> str:
    threads = sorted({t["threads"] for run in runs for t in run["benchmark"]})
    targets = sorted({t["target"] for run in runs for t in run["benchmark"]})
    lines = ["# mnv2_tf report", ""]
    for run in runs:
        metrics = run["metrics"]
        last = metrics[-1] if metrics else {}
        lines.append(
            f"- `{run['workdir']}`: {run['config']['model']} alpha {run['config']['alpha']}, "
            f"{run['config']['input_size']} px, {len(metrics)} epochs, final eval top-1 "
            f"{_pct(last.get('eval_top1'))}% on {last.get('eval_examples', '-')} images, "
            f"training wall time {last.get('wall_time_s', 0) / 60:.1f} min"
        )
    header = [
        "run",
        "model",
        "size KiB",
        "MACs (M)",
        "params (M)",
        "top-1 Keras",
        "top-1 TFLite",
        "agreement",
    ]
    for target in targets:
        prefix = "" if target == "desktop" else f"{target} "
        for n in threads:
            header += [f"{prefix}median ms {n}T", f"{prefix}p90 ms {n}T"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [
            row["run"], row["file"], f"{row['size_kb']:.1f}",
            f"{(row['macs'] or 0) / 1e6:.1f}", f"{(row['params'] or 0) / 1e6:.3f}",
            _pct(row["keras_top1"]), _pct(row["tflite_top1"]), _pct(row["agreement"]),
        ]  # fmt: skip
        for target in targets:
            prefix = "" if target == "desktop" else f"{target}_"
            for n in threads:
                cells += [
                    _ms(row.get(f"{prefix}median_us_{n}t")),
                    _ms(row.get(f"{prefix}p90_us_{n}t")),
                ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Top-1 in %, on the eval split, through LiteRT for the TFLite models; latency of "
              "the desktop LiteRT interpreter (XNNPACK) unless marked."]  # fmt: skip
    for title, path in plots.items():
        lines += ["", f"## {title}", "", f"![{title}]({os.path.basename(path)})"]
    return "\n".join(lines) + "\n"


def plot_training(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        metrics = run["metrics"]
        if not metrics:
            continue
        label = os.path.basename(os.path.normpath(run["workdir"]))
        epochs = [m["epoch"] for m in metrics]
        loss_ax.plot(epochs, [m["train_loss"] for m in metrics], "--", label=f"{label} train")
        loss_ax.plot(epochs, [m["eval_loss"] for m in metrics], label=f"{label} eval")
        top1_ax.plot(epochs, [100 * m["eval_top1"] for m in metrics], "o-", label=label)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend(fontsize=7)
    top1_ax.set_xlabel("epoch")
    top1_ax.set_ylabel("eval top-1 (%)")
    top1_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(table: list[dict], path: str, threads: int) -> None:
    """Top-1 against latency (and against MACs): the paper's trade-off, on this machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"median_us_{threads}t"
    fig, (lat_ax, mac_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in sorted({r["mode"] for r in table}):
        chosen = [
            r for r in table if r["mode"] == mode and r.get(key) and r["tflite_top1"] is not None
        ]
        lat_ax.scatter(
            [r[key] / 1000 for r in chosen], [100 * r["tflite_top1"] for r in chosen], label=mode
        )
        mac_ax.scatter(
            [r["macs"] / 1e6 for r in chosen], [100 * r["tflite_top1"] for r in chosen], label=mode
        )
        for r in chosen:
            lat_ax.annotate(r["run"], (r[key] / 1000, 100 * r["tflite_top1"]), fontsize=7)
            mac_ax.annotate(r["run"], (r["macs"] / 1e6, 100 * r["tflite_top1"]), fontsize=7)
    lat_ax.set_xlabel(f"median latency (ms, {threads} thread(s), desktop LiteRT)")
    mac_ax.set_xlabel("multiply-adds (M)")
    for ax in (lat_ax, mac_ax):
        ax.set_ylabel("top-1 (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(runs: list[dict], folder: str) -> dict:
    """Writes report.md, report.json, training.png and tradeoff.png into `folder`."""
    os.makedirs(folder, exist_ok=True)
    table = rows(runs)
    plots = {"Training curves": os.path.join(folder, "training.png")}
    plot_training(runs, plots["Training curves"])
    threads = sorted({t["threads"] for run in runs for t in run["benchmark"]})
    if threads:
        plots["Accuracy vs latency and MACs"] = os.path.join(folder, "tradeoff.png")
        plot_tradeoff(table, plots["Accuracy vs latency and MACs"], threads[0])
    report = {"rows": table, "runs": [{k: v for k, v in r.items() if k != "export"} for r in runs]}
    write_json_atomic(os.path.join(folder, "report.json"), report)
    write_text_atomic(os.path.join(folder, "report.md"), markdown(runs, table, plots))
    return report
