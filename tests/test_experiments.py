"""The paper's experiments: each runs, and shows what it claims to show."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mnv2_tf.experiments import common, relu_manifold
from tests.test_train import ROOT, needs_fmnist


def test_relu_loses_the_spiral_in_few_dimensions_and_keeps_it_in_many():
    results = relu_manifold.run(m=400, seeds=10)["results"]["activations"]
    for activation in ("relu", "relu6"):
        pinv = [r["pinv_error"] for r in results[activation]]
        linear = [r["linear_error"] for r in results[activation]]
        collapsed = [r["collapsed"] for r in results[activation]]
        assert pinv == sorted(pinv, reverse=True), (activation, pinv)
        assert linear == sorted(linear, reverse=True), (activation, linear)
        assert pinv[0] > 0.4 and pinv[-1] < 0.25, (activation, pinv)  # n = 2 vs n = 30
        assert linear[0] > 0.3 and linear[-1] < 0.01, (activation, linear)
        assert 0.15 < collapsed[0] < 0.35 and collapsed[-1] == 0.0  # n = 2: ~1 in 4 points
    for row in results["identity"]:
        assert row["pinv_error"] < 1e-9 and row["linear_error"] < 1e-9


def test_reconstruction_is_exact_for_a_positive_spiral_and_a_positive_matrix():
    """ReLU of all-positive coordinates is the identity: a check of the arithmetic itself."""
    x = relu_manifold.spiral(200) + 20.0  # every point in the positive quadrant
    t = np.abs(np.random.default_rng(0).standard_normal((5, 2)))
    out = relu_manifold.reconstruct(x, t, "relu")
    assert out["pinv_error"] < 1e-12 and out["collapsed"] == 0.0
    np.testing.assert_allclose(out["points"], x, atol=1e-9)
    flipped = relu_manifold.reconstruct(x, -t, "relu")  # every coordinate negative: all lost
    assert flipped["collapsed"] == 1.0 and flipped["pinv_error"] == 1.0


def test_relu_manifold_cli_writes_figure_and_tables(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mnv2_tf.experiments.relu_manifold", f"--out={tmp_path}",
         "--seeds=3", "--points=300"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "relu_manifold.json").read_text())
    assert data["seeds"] == 3 and data["dims"] == [2, 3, 5, 15, 30]
    assert (tmp_path / "relu_manifold.png").stat().st_size > 10_000
    assert "| relu | 30 |" in (tmp_path / "relu_manifold.md").read_text()


def _metrics(top1s, loss=1.0):
    return [
        {"epoch": i + 1, "eval_top1": t, "eval_loss": loss, "train_loss": loss, "wall_time_s": 10.0}
        for i, t in enumerate(top1s)
    ]


def test_summary_spread_and_table_come_from_the_runs(tmp_path):
    results = {
        "a": [{"seed": 0, "metrics": _metrics([0.5, 0.8])},
              {"seed": 1, "metrics": _metrics([0.6, 0.7])}],
        "b": [{"seed": 0, "metrics": _metrics([0.9, 0.85])}],
    }  # fmt: skip
    summary = common.summarize(results)
    assert summary["a"]["final_top1"]["mean"] == pytest.approx(0.75)
    assert summary["a"]["final_top1"]["std"] == pytest.approx(np.std([0.8, 0.7], ddof=1))
    assert summary["a"]["best_top1"]["values"] == [0.8, 0.7]
    assert summary["b"]["best_top1"]["values"] == [0.9] and summary["b"]["final_top1"]["std"] == 0
    text = common.table(summary)
    assert "| a | 75.00% ± 7.07% | 70.00% - 80.00% |" in text
    common.plot_curves(results, str(tmp_path / "c.png"), "t")
    assert (tmp_path / "c.png").stat().st_size > 5_000


def test_run_folders_are_named_by_what_changes_so_the_paper_model_is_trained_once():
    config = common.base_config(common.Budget.quick(), quick=True)
    paper = {"model.linear_bottleneck": True, "model.shortcut": "bottleneck"}
    assert common.run_dir("o", config, paper, 0) == "o/runs/base/seed0"
    assert common.run_dir("o", config, {"model.name": "mobilenet_v2"}, 1) == "o/runs/base/seed1"
    assert (
        common.run_dir("o", config, {"model.shortcut": "none"}, 0) == "o/runs/shortcut=none/seed0"
    )
    with pytest.raises(KeyError):
        common.set_fields(config, {"model.shortcuts": "none"})


def experiment(module, out, *args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", f"mnv2_tf.experiments.{module}", f"--out={out}", "--quick", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.mark.slow  # four trainings; the summaries and tables are checked above, in-process
@needs_fmnist
def test_linear_bottleneck_quick_trains_both_variants_and_writes_its_figure(tmp_path):
    result = experiment("linear_bottleneck", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "linear_bottleneck.json").read_text())
    assert set(data["summary"]) == {"linear bottleneck (paper)", "ReLU6 after projection"}
    for runs in data["runs"].values():
        assert [m["epoch"] for m in runs[0]["metrics"]] == [1, 2]
    assert (tmp_path / "linear_bottleneck.png").exists()
    assert "--quick" in (tmp_path / "linear_bottleneck.md").read_text()
    # The ReLU6 variant really has a ReLU after each projection, the paper's has none.
    relu6 = json.loads((tmp_path / "runs/linear_bottleneck=False/seed0/config.json").read_text())
    assert relu6["model"]["linear_bottleneck"] is False
    again = experiment("linear_bottleneck", tmp_path)  # finished runs are read back
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 2


@pytest.mark.slow
@needs_fmnist
def test_shortcuts_v1_vs_v2_and_dead_kernels_quick(tmp_path):
    result = experiment("shortcuts", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "shortcuts.json").read_text())
    assert len(data["summary"]) == 3
    result = experiment("v1_vs_v2", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "v1_vs_v2.json").read_text())
    v1, v2 = data["measured_seed0"]["MobileNetV1 0.35"], data["measured_seed0"]["MobileNetV2 0.35"]
    assert abs(v1["macs"] / v2["macs"] - 1) < 0.05  # matched compute
    assert v1["int8_latency_ms"] > 0 and v2["int8_latency_ms"] > 0
    assert "base/seed0" in result.stdout  # V2 is the shortcut experiment's paper run: skipped
    result = experiment("dead_kernels", tmp_path, "--images=64")
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "dead_kernels.json").read_text())
    v1_layers = data["models"]["MobileNetV1 0.35"][0]["layers"]
    assert len(v1_layers) == 13 and len(data["models"]["MobileNetV2 0.35"][0]["layers"]) == 17
    assert all(0 <= r["never_active"] <= r["constant"] <= r["channels"] for r in v1_layers)
