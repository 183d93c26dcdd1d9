"""Dead depthwise kernels in trained MobileNetV1 and MobileNetV2.

Trained MobileNetV1s are known for depthwise kernels that end up (near) zero, or whose
channel never passes anything through its ReLU: a low-dimensional layer followed by ReLU
loses channels for good, which the paper's Section 3.2 (and Figure 1) explains and V2's
expanded, linear-bottleneck blocks are meant to tolerate. For every depthwise layer of the
runs `v1_vs_v2` trains (the same --out; trained here if missing), per channel:

- near-zero kernel: its 3x3 kernel's L2 norm is below `--relative_norm` (default 1%) of the
  largest kernel norm in the same layer;
- never active: after BN and ReLU6 the channel is 0 at every position of every one of
  `--images` training images (it carries no information forward);
- constant: the channel's output does not vary at all over those images (never active, or
  saturated at 6 everywhere).

    python -m mnv2_tf.experiments.dead_kernels --out=docs/experiments/v1_vs_v2
    python -m mnv2_tf.experiments.dead_kernels --out=/tmp/v --quick   # the tests'
"""

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
import os

import numpy as np
import tf_keras
from absl import flags

from mnv2_tf.experiments import common, v1_vs_v2
from mnv2_tf.export import exporter
from mnv2_tf.export import run as run_lib


def _following(model: tf_keras.Model, depthwise: str, suffixes: tuple[str, ...]):
    names = {layer.name for layer in model.layers}
    for suffix in suffixes:
        if depthwise + suffix in names:
            return model.get_layer(depthwise + suffix)
    raise ValueError(f"no layer {depthwise}{'|'.join(suffixes)} after {depthwise}")


def depthwise_layers(model: tf_keras.Model) -> list[tuple[tf_keras.layers.Layer, object]]:
    """(depthwise conv, its ReLU6) pairs in order; V1 and V2 both name the ReLU `<dw>_relu`."""
    return [
        (layer, _following(model, layer.name, ("_relu",)))
        for layer in model.layers
        if isinstance(layer, tf_keras.layers.DepthwiseConv2D)
    ]


def analyse(model: tf_keras.Model, images: np.ndarray, relative_norm: float) -> list[dict]:
    """Per depthwise layer: channels, near-zero kernels, never-active and constant channels."""
    pairs = depthwise_layers(model)
    probe = tf_keras.Model(model.inputs, [relu.output for _, relu in pairs])
    maxima = [None] * len(pairs)
    minima = [None] * len(pairs)
    for start in range(0, len(images), 64):
        outputs = probe(images[start : start + 64], training=False)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        for i, out in enumerate(outputs):
            out = out.numpy().reshape(-1, out.shape[-1])
            hi, lo = out.max(axis=0), out.min(axis=0)
            maxima[i] = hi if maxima[i] is None else np.maximum(maxima[i], hi)
            minima[i] = lo if minima[i] is None else np.minimum(minima[i], lo)
    rows = []
    for (layer, _), hi, lo in zip(pairs, maxima, minima, strict=True):
        kernel = layer.depthwise_kernel.numpy()  # (3, 3, channels, 1)
        norms = np.sqrt(np.sum(kernel**2, axis=(0, 1, 3)))
        rows.append(
            {
                "layer": layer.name,
                "channels": int(norms.size),
                "near_zero_kernels": int(np.sum(norms < relative_norm * norms.max())),
                "never_active": int(np.sum(hi <= 0.0)),
                "constant": int(np.sum(hi - lo <= 1e-6)),
                "median_norm": float(np.median(norms)),
            }
        )
    return rows


def totals(rows: list[dict]) -> dict:
    channels = sum(r["channels"] for r in rows)
    out = {"layers": len(rows), "channels": channels}
    for key in ("near_zero_kernels", "never_active", "constant"):
        count = sum(r[key] for r in rows)
        out[key] = count
        out[key + "_fraction"] = count / channels
    return out


def plot(per_model: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    for name, seeds in per_model.items():
        rows = seeds[0]["layers"]
        fraction = [r["constant"] / r["channels"] for r in rows]
        ax.plot(np.arange(1, len(rows) + 1), fraction, marker="o", label=f"{name} (seed 0)")
    ax.set(
        xlabel="depthwise layer (input to output)",
        ylabel="share of channels constant",
        title="Depthwise channels that pass nothing on (constant after BN + ReLU6)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    f = flags.FLAGS
    out = f.out
    budget, quick = common.budget_from_flags()
    timer = common.Timer()
    _, results = v1_vs_v2.train(out, budget, quick, f.alpha_v1, f.alpha_v2)
    per_model = {}
    for name, runs in results.items():
        per_model[name] = []
        for run in runs:
            loaded = run_lib.load(os.path.join(out, run["workdir"]))
            images = exporter.calibration_images(loaded, max(1, f.images // 32))
            rows = analyse(loaded.model, images, f.relative_norm)
            per_model[name].append({"seed": run["seed"], "layers": rows, "totals": totals(rows)})
    plot(per_model, os.path.join(out, "dead_kernels.png"))
    lines = [
        "| model | seed | depthwise channels | near-zero kernels | never active | constant |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, seeds in per_model.items():
        for s in seeds:
            t = s["totals"]
            lines.append(
                f"| {name} | {s['seed']} | {t['channels']} "
                f"| {t['near_zero_kernels']} ({t['near_zero_kernels_fraction']:.1%}) "
                f"| {t['never_active']} ({t['never_active_fraction']:.1%}) "
                f"| {t['constant']} ({t['constant_fraction']:.1%}) |"
            )
    data = common.payload(
        "dead_kernels", budget, quick, timer, relative_norm=f.relative_norm, images=f.images,
        models=per_model,
    )  # fmt: skip
    body = [
        f"The runs of `v1_vs_v2` ({budget.images()}). Near-zero: kernel L2 norm below "
        f"{f.relative_norm:.0%} of the layer's largest. Never active / constant: measured "
        f"after BN + ReLU6 on {f.images} training images.",
        "",
        *lines,
        "",
        "![per layer](dead_kernels.png)",
        "",
    ]
    title = "Dead depthwise kernels: MobileNetV1 vs MobileNetV2"
    common.write(out, "dead_kernels", data, title, body)


if __name__ == "__main__":
    from mnv2_tf import cli

    v1_vs_v2.define_flags()
    flags.DEFINE_integer("images", 512, "Training images the activations are measured on.")
    flags.DEFINE_float("relative_norm", 0.01, "Near-zero: below this share of the layer's max.")
    cli.run(main)
