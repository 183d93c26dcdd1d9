"""MobileNetV1 vs MobileNetV2 at matched input size and cost (the paper's Table 4 question).

Both are trained on Fashion-MNIST at the same budget and stride layout (32 px, output stride
8); their widths are chosen for similar MACs (alpha 0.35 each: 8.5M vs 8.3M MACs, 418K vs
423K parameters). Seed 0 of each is exported (float32 and int8 PTQ), evaluated with LiteRT
and timed on this machine's LiteRT interpreter (XNNPACK, 1 thread).

    python -m mnv2_tf.experiments.v1_vs_v2 --out=docs/experiments/v1_vs_v2
    python -m mnv2_tf.experiments.v1_vs_v2 --out=/tmp/v --quick   # the tests'

`dead_kernels` reads the same runs (same --out): run it after this one, or alone.
"""

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
import os

from absl import flags

from mnv2_tf.experiments import common
from mnv2_tf.pipeline import stages

CLAIM = (
    "Table 4 (ImageNet, 224 px): MobileNetV2 1.0 reaches 72.0% top-1 with 3.4M parameters "
    "and 300M MACs against MobileNetV1 1.0's 70.6% with 4.2M and 575M: better accuracy at "
    "about half the compute. The comparison here is at matched compute instead (both about "
    "8.4M MACs), which asks the same question more strictly."
)


def variants(alpha_v1: float, alpha_v2: float) -> dict[str, dict]:
    return {
        f"MobileNetV1 {alpha_v1}": {"model.name": "mobilenet_v1", "model.alpha": alpha_v1},
        f"MobileNetV2 {alpha_v2}": {"model.name": "mobilenet_v2", "model.alpha": alpha_v2},
    }


def train(out: str, budget: common.Budget, quick: bool, alpha_v1: float, alpha_v2: float,
          log=print) -> tuple[object, dict[str, list[dict]]]:  # fmt: skip
    config = common.base_config(budget, quick)
    return config, common.train_variants(config, variants(alpha_v1, alpha_v2), budget, out, log)


def export_and_time(out: str, results: dict[str, list[dict]], quick: bool, log=print) -> dict:
    """Seed 0 of each variant: float32 + int8 export, LiteRT top-1, 1-thread latency."""
    measured = {}
    for name, runs in results.items():
        workdir = os.path.join(out, runs[0]["workdir"])
        config = common.export_config(workdir, quick)
        report = stages.stage_export(config, workdir, log)
        bench = stages.stage_benchmark(config, workdir, report, log=log)
        latency = {r["mode"]: r["median_us"] / 1000 for r in bench if r["threads"] == 1}
        measured[name] = {
            "macs": report["macs"],
            "params": report["params"],
            "float32_top1": report["models"]["float32"]["top1"],
            "int8_top1": report["models"]["int8"]["top1"],
            "int8_agreement": report["models"]["int8"]["agreement"],
            "keras_top1": report["models"]["float32"]["keras_top1"],
            "int8_size_bytes": report["models"]["int8"]["size_bytes"],
            "float32_latency_ms": latency.get("float32"),
            "int8_latency_ms": latency.get("int8"),
        }
    return measured


def table(summary: dict, measured: dict) -> str:
    lines = [
        "| model | params | MACs | Keras top-1 (mean ± std over seeds) | seed 0: float32 "
        "TFLite | int8 TFLite | int8 size | float32 ms | int8 ms (1 thread) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in measured.items():
        top1 = summary[name]["final_top1"]
        lines.append(
            f"| {name} | {m['params'] / 1e3:.0f}K | {m['macs'] / 1e6:.2f}M "
            f"| {top1['mean']:.2%} ± {top1['std']:.2%} | {m['float32_top1']:.2%} "
            f"| {m['int8_top1']:.2%} | {m['int8_size_bytes'] / 1024:.0f} KiB "
            f"| {m['float32_latency_ms']:.3f} | {m['int8_latency_ms']:.3f} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    out = flags.FLAGS.out
    budget, quick = common.budget_from_flags()
    timer = common.Timer()
    config, results = train(out, budget, quick, flags.FLAGS.alpha_v1, flags.FLAGS.alpha_v2)
    summary = common.summarize(results)
    measured = export_and_time(out, results, quick)
    common.plot_curves(results, os.path.join(out, "v1_vs_v2.png"), "MobileNetV1 vs MobileNetV2")
    data = common.payload(
        "v1_vs_v2", budget, quick, timer, summary=summary, measured_seed0=measured, runs=results
    )
    body = [
        f"Fashion-MNIST, {config.model.input_size} px, output stride "
        f"{config.model.output_stride}, {budget.images()} of batch "
        f"{config.train.batch_size}, {budget.seeds} seed(s); top-1 "
        f"on {budget.eval_examples or 'all 10,000'} test images. Latency: median of "
        "LiteRT (XNNPACK) on this machine, 1 thread.",
        "",
        table(summary, measured),
        "",
        "![curves](v1_vs_v2.png)",
        "",
        f"**The paper's claim.** {CLAIM}",
        "",
    ]
    common.write(out, "v1_vs_v2", data, "MobileNetV1 vs MobileNetV2 at matched compute", body)


def define_flags() -> None:
    """The budget's flags and the two widths (this entry point's and dead_kernels')."""
    common.define_budget_flags()
    flags.DEFINE_float("alpha_v1", 0.35, "MobileNetV1's width multiplier.")
    flags.DEFINE_float("alpha_v2", 0.35, "MobileNetV2's width multiplier.")


if __name__ == "__main__":
    from mnv2_tf import cli

    define_flags()
    cli.run(main)
