"""ReLU on low-dimensional manifolds (MobileNetV2 paper, Figure 1).

A 2-D spiral X (m points) is embedded in n dimensions by a random matrix T (n x 2, Gaussian),
passed through a non-linearity f, and projected back with the pseudo-inverse of T:

    X' = pinv(T) f(T X)

For f = ReLU and small n, whole arcs of the spiral are flattened onto a few lines (a point
whose n coordinates are all negative becomes 0); for large n enough coordinates survive at
every point that the spiral comes back. The paper's argument for linear bottlenecks.

    python -m mnv2_tf.experiments.relu_manifold --out=docs/experiments/relu_manifold

Three error figures per (f, n), averaged over `--seeds` random matrices, all relative to
the spiral's mean squared norm (0 = perfect, 1 = as bad as predicting the origin):
- `pinv_error`: X' against X after the best single scale factor s (min ||s X' - X||). ReLU
  zeroes about half of the coordinates, so pinv halves the spiral on average; a scale is
  not information, so it is fitted away. This is the paper's projection.
- `linear_error`: the best linear decoder W (2 x n, least squares on the same points)
  from f(T X) back to X: how much of the spiral is still linearly readable at all.
- `collapsed`: the fraction of points mapped to the zero vector (every coordinate clipped).
Writes relu_manifold.png (input + reconstruction for each n, one row per f),
relu_manifold.json and relu_manifold.md.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "relu6": lambda z: np.clip(z, 0.0, 6.0),
    "identity": lambda z: z,
}
DIMS = (2, 3, 5, 15, 30)


def spiral(m: int, turns: float = 2.0, radius: float = 8.0) -> np.ndarray:
    """(m, 2) points of an Archimedean spiral around the origin, out to `radius`.

    The radius matters only for ReLU6: with T ~ N(0, 1) the embedded coordinates reach a few
    times `radius`, so the outer turn crosses 6 and ReLU6 clips it.
    """
    t = np.linspace(0.0, 1.0, m)
    angle = 2.0 * np.pi * turns * t
    r = radius * (0.15 + 0.85 * t)
    return np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)


def reconstruct(x: np.ndarray, t: np.ndarray, activation: str) -> dict:
    """Embed x (m, 2) in n dims with T (n, 2), apply the activation, map back."""
    y = ACTIVATIONS[activation](x @ t.T)  # (m, n)
    back = y @ np.linalg.pinv(t).T  # (m, 2): pinv(T) y for every point
    norm = float(np.mean(np.sum(x**2, axis=1)))
    denom = float(np.sum(back * back))
    scale = float(np.sum(back * x)) / denom if denom > 0 else 0.0
    pinv_error = float(np.mean(np.sum((scale * back - x) ** 2, axis=1))) / norm
    decoder, *_ = np.linalg.lstsq(y, x, rcond=None)  # (n, 2): the best linear read-out
    linear_error = float(np.mean(np.sum((y @ decoder - x) ** 2, axis=1))) / norm
    return {
        "points": scale * back,
        "pinv_error": pinv_error,
        "linear_error": linear_error,
        "collapsed": float(np.mean(np.all(y == 0.0, axis=1))),
    }


def run(
    m: int = 1000,
    dims: tuple[int, ...] = DIMS,
    seeds: int = 20,
    activations: tuple[str, ...] = tuple(ACTIVATIONS),
) -> dict:
    """Errors per (activation, n), mean and std over `seeds` matrices; the seed-0 points."""
    x = spiral(m)
    results: dict = {"m": m, "seeds": seeds, "dims": list(dims), "activations": {}}
    examples: dict = {}
    for activation in activations:
        rows = []
        for n in dims:
            per_seed = [
                reconstruct(x, np.random.default_rng([seed, n]).standard_normal((n, 2)), activation)
                for seed in range(seeds)
            ]
            row = {"n": n}
            for key in ("pinv_error", "linear_error", "collapsed"):
                values = np.array([r[key] for r in per_seed])
                row[key] = float(values.mean())
                row[key + "_std"] = float(values.std())
            rows.append(row)
            examples[(activation, n)] = per_seed[0]["points"]
        results["activations"][activation] = rows
    return {"results": results, "input": x, "examples": examples}


def markdown(results: dict) -> str:
    lines = [
        "# ReLU on a 2-D spiral embedded in n dimensions (paper Figure 1)",
        "",
        f"{results['m']} points; mean (std) over {results['seeds']} random T ~ N(0, 1). "
        "Errors are relative to the spiral's mean squared norm (0 = exact, 1 = nothing kept). "
        "`pinv` is the paper's projection pinv(T) f(T X) after the best single scale; "
        "`linear` is the best linear decoder from f(T X); `collapsed` is the share of points "
        "sent to the zero vector.",
        "",
        "| f | n | pinv error | linear error | collapsed |",
        "|---|---:|---:|---:|---:|",
    ]
    for activation, rows in results["activations"].items():
        for r in rows:
            lines.append(
                f"| {activation} | {r['n']} | {r['pinv_error']:.3f} ({r['pinv_error_std']:.3f}) "
                f"| {r['linear_error']:.3f} ({r['linear_error_std']:.3f}) "
                f"| {r['collapsed']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def plot(run_output: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = run_output["input"]
    dims = run_output["results"]["dims"]
    activations = list(run_output["results"]["activations"])
    rows = {a: {r["n"]: r for r in run_output["results"]["activations"][a]} for a in activations}
    fig, axes = plt.subplots(
        len(activations), len(dims) + 1, figsize=(2.2 * (len(dims) + 1), 2.3 * len(activations))
    )
    axes = np.atleast_2d(axes)
    colour = np.linspace(0.0, 1.0, len(x))
    limit = 1.1 * np.abs(x).max()
    for i, activation in enumerate(activations):
        panels = [("input", x)] + [
            (
                f"{activation}, n = {n}\nmean error {rows[activation][n]['pinv_error']:.2f}",
                run_output["examples"][(activation, n)],
            )
            for n in dims
        ]
        for ax, (title, points) in zip(axes[i], panels, strict=True):
            ax.scatter(points[:, 0], points[:, 1], c=colour, cmap="viridis", s=2)
            ax.set_title(title, fontsize=8)
            ax.set_xlim(-limit, limit)
            ax.set_ylim(-limit, limit)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        "pinv(T) f(T x): a spiral through f in n dimensions and back (one T shown; "
        "error: mean over seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: str, m: int = 1000, seeds: int = 20) -> dict:
    start = time.time()
    output = run(m=m, seeds=seeds)
    os.makedirs(out, exist_ok=True)
    results = dict(output["results"], wall_time_s=round(time.time() - start, 2))
    with open(os.path.join(out, "relu_manifold.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "relu_manifold.md"), "w") as f:
        f.write(markdown(results))
    plot(output, os.path.join(out, "relu_manifold.png"))
    return results


def main(argv: list[str]) -> None:
    del argv
    from absl import flags

    results = write(flags.FLAGS.out, flags.FLAGS.points, flags.FLAGS.seeds)
    print(markdown(results))
    print(f"wrote relu_manifold.png/.json/.md to {flags.FLAGS.out} in {results['wall_time_s']} s")


if __name__ == "__main__":
    from absl import flags

    from mnv2_tf import cli

    flags.DEFINE_string("out", "relu_manifold", "Output folder.")
    flags.DEFINE_integer("points", 1000, "Points on the spiral.")
    flags.DEFINE_integer("seeds", 20, "Random matrices T per (f, n).")
    cli.run(main)
