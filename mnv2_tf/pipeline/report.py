"""The pipeline's report: report.md, report.json and PNG plots, from the stage outputs.

Every figure in the report is copied from a stage output (metrics.json, export_report.json,
benchmark.json); nothing is recomputed, so the report and the files it summarizes agree.
What a run's task measures (its columns, its headline figure, the metric that picked
`best/`) comes from the task (`Task.summary_columns`, `headline`, `best_metric`).
"""

from __future__ import annotations

import math
import os

from mnv2_tf import fileio, tasks


def _task(run: dict) -> type[tasks.Task]:
    return tasks.task_class(run.get("task", "classification"))


def rows(runs: list[dict]) -> list[dict]:
    """One row per (run, exported model): size, MACs, params, the task's figures (its
    summary columns; `headline`: the converted model's main figure), latency."""
    table = []
    for run in runs:
        export, task = run["export"], _task(run)
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
                "task": task.name,
                "headline": entry.get(task.headline),
                # "ready" (MediaPipe Tasks loads it unchanged), "no: why", or None (an export
                # from before the metadata)
                "mediapipe": entry.get("mediapipe"),
                **{c.key: entry.get(c.key) for c in task.summary_columns},
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


def _mediapipe(value) -> str:
    return {"ready": "ready", None: "-"}.get(value, "no")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _init_text(init: dict) -> str:
    """model.init_from as the report says it: a named backbone with its own figures."""
    backbone = init.get("backbone")
    if not backbone:
        return f"`{init.get('url') or init['from']}`"
    return (
        f"`{init['from']}`, a classifier of its own: {backbone.get('figure', '-')}, trained in "
        f"{backbone.get('train_wall_time_s', 0) / 60:.1f} min (`{backbone['workdir']}`)"
    )


def markdown(
    runs: list[dict], table: list[dict], plots: dict[str, str], folder: str | None = None
) -> str:
    threads = sorted({t["threads"] for run in runs for t in run["benchmark"]})
    targets = sorted({t["target"] for run in runs for t in run["benchmark"]})
    lines = ["# mnv2_tf report", ""]
    for run in runs:
        metrics, task = run["metrics"], _task(run)
        last = metrics[-1] if metrics else {}
        lines.append(
            f"- `{run['workdir']}`: {task.name}, {run['config']['model']} alpha "
            f"{run['config']['alpha']}, {run['config']['input_size']} px, {len(metrics)} epochs, "
            f"final eval {task.best_label} {_pct(last.get(task.best_metric))}% on "
            f"{last.get('eval_examples', '-')} images, "
            f"training wall time {last.get('wall_time_s', 0) / 60:.1f} min"
        )
        if run.get("init"):
            lines.append(f"  - started from {_init_text(run['init'])}")
    # One table per task: its columns differ.
    columns = {c.key: c for run in runs for c in _task(run).summary_columns}
    header = ["run", "model", "MediaPipe", "size KiB", "MACs (M)", "params (M)"]
    header += [c.header for c in columns.values()]
    for target in targets:
        prefix = "" if target == "desktop" else f"{target} "
        for n in threads:
            header += [f"{prefix}median ms {n}T", f"{prefix}p90 ms {n}T"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [
            row["run"], row["file"], _mediapipe(row.get("mediapipe")), f"{row['size_kb']:.1f}",
            f"{(row['macs'] or 0) / 1e6:.1f}", f"{(row['params'] or 0) / 1e6:.3f}",
        ]  # fmt: skip
        cells += [c.format(row.get(c.key)) for c in columns.values()]
        for target in targets:
            prefix = "" if target == "desktop" else f"{target}_"
            for n in threads:
                cells += [
                    _ms(row.get(f"{prefix}median_us_{n}t")),
                    _ms(row.get(f"{prefix}p90_us_{n}t")),
                ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Figures in %, on the eval split, through LiteRT for the TFLite models (Keras: "
              "the float model); latency of the desktop LiteRT interpreter (XNNPACK) unless "
              "marked. MediaPipe: whether the file loads unchanged in MediaPipe Tasks "
              f"({', '.join(sorted({_task(r).mediapipe_api for r in runs}))}): its metadata, "
              "input and output types."]  # fmt: skip
    not_ready = [r for r in table if r.get("mediapipe") not in ("ready", None)]
    for row in not_ready:
        lines.append(
            f"- `{row['run']}/{row['file']}` is not MediaPipe-ready: {row['mediapipe'][4:]}"
        )
    for title, path in plots.items():
        link = os.path.relpath(path, folder) if folder else os.path.basename(path)
        lines += ["", f"## {title}", "", f"![{title}]({link})"]
    return "\n".join(lines) + "\n"


def plot_training(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    labels = set()
    for run in runs:
        metrics, task = run["metrics"], _task(run)
        if not metrics:
            continue
        label = os.path.basename(os.path.normpath(run["workdir"]))
        epochs = [m["epoch"] for m in metrics]
        loss_ax.plot(epochs, [m["train_loss"] for m in metrics], "--", label=f"{label} train")
        loss_ax.plot(epochs, [m.get("eval_loss") for m in metrics], label=f"{label} eval")
        metric_ax.plot(epochs, [100 * m[task.best_metric] for m in metrics], "o-", label=label)
        labels.add(task.best_label)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend(fontsize=7)
    metric_ax.set_xlabel("epoch")
    metric_ax.set_ylabel(f"eval {' / '.join(sorted(labels))} (%)")
    metric_ax.legend(fontsize=7)
    fig.tight_layout()
    fileio.write_bytes_atomic(path, fileio.png_bytes(fig, dpi=110))


def plot_tradeoff(table: list[dict], path: str, threads: int) -> None:
    """The headline figure (accuracy, mAP, mIOU) against latency and against MACs: the paper's
    trade-off, on this machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"median_us_{threads}t"
    fig, (lat_ax, mac_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in sorted({r["mode"] for r in table}):
        chosen = [
            r for r in table if r["mode"] == mode and r.get(key) and r["headline"] is not None
        ]
        lat_ax.scatter(
            [r[key] / 1000 for r in chosen], [100 * r["headline"] for r in chosen], label=mode
        )
        mac_ax.scatter(
            [r["macs"] / 1e6 for r in chosen], [100 * r["headline"] for r in chosen], label=mode
        )
        for r in chosen:
            lat_ax.annotate(r["run"], (r[key] / 1000, 100 * r["headline"]), fontsize=7)
            mac_ax.annotate(r["run"], (r["macs"] / 1e6, 100 * r["headline"]), fontsize=7)
    lat_ax.set_xlabel(f"median latency (ms, {threads} thread(s), desktop LiteRT)")
    mac_ax.set_xlabel("multiply-adds (M)")
    names = sorted({tasks.task_class(r["task"]).headline_label for r in table})
    for ax in (lat_ax, mac_ax):
        ax.set_ylabel(f"{' / '.join(names)} (%), TFLite")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fileio.write_bytes_atomic(path, fileio.png_bytes(fig, dpi=110))


def write(runs: list[dict], folder: str) -> dict:
    """Writes report.md, report.json, training.png and tradeoff.png into `folder` (held by
    this writer alone, as the pipeline holds its workdir)."""
    fileio.makedirs(folder)
    with fileio.workdir_lock(folder, "the pipeline report"):
        return _write(runs, folder)


def _write(runs: list[dict], folder: str) -> dict:
    table = rows(runs)
    plots = {"Training curves": os.path.join(folder, "training.png")}
    plot_training(runs, plots["Training curves"])
    threads = sorted({t["threads"] for run in runs for t in run["benchmark"]})
    if threads:
        plots["Accuracy vs latency and MACs"] = os.path.join(folder, "tradeoff.png")
        plot_tradeoff(table, plots["Accuracy vs latency and MACs"], threads[0])
    for run in runs:
        if run.get("examples_png"):
            title = f"Eval images, {os.path.basename(run['workdir'].rstrip('/'))}"
            plots[title] = run["examples_png"]
    report = {"rows": table, "runs": [{k: v for k, v in r.items() if k != "export"} for r in runs]}
    fileio.write_json_atomic(os.path.join(folder, "report.json"), report)
    fileio.write_text_atomic(
        os.path.join(folder, "report.md"), markdown(runs, table, plots, folder)
    )
    return report
