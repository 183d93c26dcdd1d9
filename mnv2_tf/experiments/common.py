"""What the training experiments share: the budget, the runs over variants x seeds, the
summary table with spread, and the accuracy-curve figure.

Every run is a normal training run (`trainer.train`) in `OUT/runs/<variant>/seed<k>/`,
so an interrupted experiment resumes where it stopped and a finished run is read back.
The run folder is named by the run's own overrides, so two experiments that need the same
model (the paper's MobileNetV2 is the baseline of Figures 6a and 6b) train it once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time

from mnv2_tf import config as config_lib
from mnv2_tf.errors import UserError
from mnv2_tf.fileio import write_json_atomic, write_text_atomic
from mnv2_tf.pipeline import stages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FASHION_MNIST_CONFIG = os.path.join(ROOT, "configs", "fashion_mnist.py")


@dataclasses.dataclass
class Budget:
    """How much each run trains. The default is the full experiment's (docs/experiments)."""

    seeds: int = 3
    epochs: int = 5  # evaluations on the test split: the points of the curves
    steps_per_epoch: int | None = 80  # of 128 images; 5 x 80 steps: 51,200 images, 0.85 epochs
    train_examples: int | None = None  # None: all 60,000 (shuffled, so no image repeats)
    eval_examples: int | None = None  # None: the whole 10,000-image test split
    data_dir: str | None = None  # None: the config's (Debian's Fashion-MNIST)

    @classmethod
    def quick(cls, data_dir: str | None = None) -> Budget:
        """The tests' budget: a few steps, one seed; checks the machinery, not the claim.
        Enough steps that the models leave chance (an untrained model's int8 export is
        near-ties everywhere, and its self-check then judges rounding noise)."""
        return cls(
            seeds=1, epochs=2, steps_per_epoch=20, train_examples=1024, eval_examples=100,
            data_dir=data_dir,
        )  # fmt: skip

    def images(self) -> str:
        if self.steps_per_epoch:
            return f"{self.epochs} x {self.steps_per_epoch} steps"
        return f"{self.epochs} epochs of {self.train_examples or 'all'} images"


def export_config(workdir: str, quick: bool):
    """A trained run's config with the experiments' export and benchmark settings: float32
    and int8 PTQ, one thread."""
    config, _ = config_lib.load_saved(workdir)
    config.export.modes = "float32,int8"
    config.export.calibration_steps = 4 if quick else 16
    config.bench.threads = "1"
    config.bench.warmup_runs, config.bench.num_runs = (3, 10) if quick else (20, 100)
    return config


def base_config(budget: Budget, quick: bool):
    """configs/fashion_mnist.py (alpha 0.35, 32 px, output stride 8) at `budget`."""
    config = config_lib.load_file(FASHION_MNIST_CONFIG)
    config.train.epochs = budget.epochs
    config.train.steps_per_epoch = budget.steps_per_epoch
    config.data.max_train_examples = budget.train_examples
    config.data.max_eval_examples = budget.eval_examples
    if budget.data_dir:
        config.data.data_dir = budget.data_dir
    config.train.save_saved_model = False
    # A few thousand steps: BN statistics and the EMA must follow the weights in time
    # (at momentum 0.99 / decay 0.999 a short run is evaluated with stale statistics).
    config.model.bn_momentum = 0.9
    config.train.ema_decay = 0.99
    if quick:
        config.train.batch_size, config.train.lr_batch_size = 32, 32
        config.train.learning_rate = 0.05
        config.data.shuffle_buffer = 256
    return config


set_fields = config_lib.set_fields  # the experiments' variants are field overrides


def run_dir(out: str, config, overrides: dict, seed: int) -> str:
    """OUT/runs/<the overrides that change `config`, or "base">/seed<k>."""
    changed = sorted(
        (k, v) for k, v in overrides.items() if config[k.split(".")[0]][k.split(".")[1]] != v
    )
    name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in changed) or "base"
    return os.path.join(out, "runs", name, f"seed{seed}")


def train_variants(
    config, variants: dict[str, dict], budget: Budget, out: str, log=print
) -> dict[str, list[dict]]:
    """Trains every variant with seeds 0..budget.seeds-1; {variant: [run, ...]}.

    Each run is {"seed", "workdir", "metrics" (one dict per epoch), "wall_time_s"}.
    """
    results: dict[str, list[dict]] = {}
    for name, overrides in variants.items():
        results[name] = []
        for seed in range(budget.seeds):
            run_config = set_fields(config, {**overrides, "train.seed": seed})
            workdir = run_dir(out, config, overrides, seed)
            log(f"[{name}] seed {seed}: {workdir}")
            metrics = stages.stage_train(run_config, workdir, log=log)
            results[name].append(
                {
                    "seed": seed,
                    "workdir": os.path.relpath(workdir, out),
                    "metrics": metrics,
                    "wall_time_s": metrics[-1]["wall_time_s"] if metrics else None,
                }
            )
    return results


def _spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Final and best eval top-1 (and final eval loss) per variant, over seeds."""
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "final_top1": _spread([r["metrics"][-1]["eval_top1"] for r in runs]),
            "best_top1": _spread([max(m["eval_top1"] for m in r["metrics"]) for r in runs]),
            "final_eval_loss": _spread([r["metrics"][-1]["eval_loss"] for r in runs]),
            "final_train_loss": _spread([r["metrics"][-1]["train_loss"] for r in runs]),
            "seeds": [r["seed"] for r in runs],
        }
    return summary


def table(summary: dict[str, dict]) -> str:
    lines = [
        "| variant | final top-1 (mean ± std) | min - max | best top-1 | final train loss "
        "| final eval loss | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        f = s["final_top1"]
        lines.append(
            f"| {name} | {f['mean']:.2%} ± {f['std']:.2%} | {f['min']:.2%} - {f['max']:.2%} "
            f"| {s['best_top1']['mean']:.2%} | {s['final_train_loss']['mean']:.4f} "
            f"| {s['final_eval_loss']['mean']:.4f} | {len(s['seeds'])} |"
        )
    return "\n".join(lines)


def plot_curves(results: dict[str, list[dict]], path: str, title: str) -> None:
    """Eval top-1 and train loss per epoch: one line per variant (mean), seeds shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_top1, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, runs in results.items():
        epochs = min(len(r["metrics"]) for r in runs)
        x = np.array([m.get("step", m["epoch"]) for m in runs[0]["metrics"][:epochs]])
        for ax, key in ((ax_top1, "eval_top1"), (ax_loss, "train_loss")):
            values = np.array([[m[key] for m in r["metrics"][:epochs]] for r in runs])
            (line,) = ax.plot(x, values.mean(axis=0), marker="o", label=name)
            if len(runs) > 1:
                ax.fill_between(
                    x, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2
                )
    ax_top1.set(
        xlabel="training step", ylabel="eval top-1", title="eval top-1 (band: min-max over seeds)"
    )
    ax_loss.set(xlabel="training step", ylabel="train loss (last epoch's mean)", title="train loss")
    for ax in (ax_top1, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def payload(name: str, budget: Budget, quick: bool, timer: Timer, **fields) -> dict:
    """What every experiment's JSON opens with, then its own `fields`."""
    return {
        "experiment": name,
        "command": command_line(),
        "budget": dataclasses.asdict(budget),
        "quick": quick,
        **fields,
        "wall_time_s_this_invocation": timer.seconds(),
    }


def write(out: str, name: str, data: dict, title: str, body: list[str]) -> None:
    """OUT/<name>.json and OUT/<name>.md (title, the command, `body`), atomically; prints
    the Markdown."""
    markdown = "\n".join([f"# {title}", "", f"`{data['command']}`", "", *body])
    write_json_atomic(os.path.join(out, f"{name}.json"), json.loads(json.dumps(data)))
    write_text_atomic(os.path.join(out, f"{name}.md"), markdown)
    print(markdown)


def command_line() -> str:
    import shlex
    import sys

    return "python -m " + " ".join(
        shlex.quote(a) for a in [sys.modules["__main__"].__spec__.name, *sys.argv[1:]]
    )


class Timer:
    def __init__(self):
        self.start = time.time()

    def seconds(self) -> float:
        return round(time.time() - self.start, 1)


def define_budget_flags() -> None:
    """--out, --quick, --seeds, --epochs, --train_examples, --data_dir (entry points only)."""
    from absl import flags

    defaults = Budget()
    flags.DEFINE_string("out", None, "Output folder (runs/, tables, figures).", required=True)
    flags.DEFINE_bool("quick", False, "A few steps and one seed: checks the machinery only.")
    flags.DEFINE_integer("seeds", defaults.seeds, "Seeds per variant.")
    flags.DEFINE_integer("epochs", defaults.epochs, "Epochs (evaluations) per run.")
    flags.DEFINE_integer(
        "steps_per_epoch", defaults.steps_per_epoch, "Steps between evaluations (0: a pass)."
    )
    flags.DEFINE_integer("train_examples", 0, "Use only this many training images (0: all).")
    flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: the config's).")


def budget_from_flags() -> tuple[Budget, bool]:
    from absl import flags

    f = flags.FLAGS
    if f.quick:
        return Budget.quick(f.data_dir), True
    if f.seeds < 1 or f.epochs < 1:
        raise UserError("--seeds and --epochs must be at least 1")
    return Budget(
        seeds=f.seeds, epochs=f.epochs, steps_per_epoch=f.steps_per_epoch or None,
        train_examples=f.train_examples or None, data_dir=f.data_dir,
    ), False  # fmt: skip


def ablation(name: str, title: str, variants: dict[str, dict], claim: str, log=print) -> dict:
    """Trains `variants` x seeds at the flags' budget; writes NAME.json/.md/.png in --out."""
    from absl import flags

    out = flags.FLAGS.out
    budget, quick = budget_from_flags()
    timer = Timer()
    config = base_config(budget, quick)
    results = train_variants(config, variants, budget, out, log)
    summary = summarize(results)
    plot_curves(results, os.path.join(out, f"{name}.png"), title)
    training_s = sum(r["wall_time_s"] or 0 for v in results.values() for r in v)
    data = payload(
        name, budget, quick, timer, variants=variants, summary=summary, runs=results,
        wall_time_s_training=training_s,
    )  # fmt: skip
    body = [
        f"MobileNetV2 alpha {config.model.alpha}, {config.model.input_size} px, output "
        f"stride {config.model.output_stride}, Fashion-MNIST, {budget.images()} of "
        f"batch {config.train.batch_size} (SGD, warm-up, cosine), seeds "
        f"{', '.join(str(s) for s in range(budget.seeds))}; top-1 on "
        f"{budget.eval_examples or 'all 10,000'} test images (EMA weights). Training "
        f"time {training_s / 60:.1f} min in total.",
        "",
        table(summary),
        "",
        f"![curves]({name}.png)",
        "",
        f"**The paper's claim.** {claim}",
        "",
    ]
    write(out, name, data, title, body)
    return data
