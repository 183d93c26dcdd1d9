"""The paper's experiments: each runs, and shows what it claims to show."""

import json
import subprocess
import sys

import numpy as np

from mnv2_tf.experiments import relu_manifold
from tests.test_train import ROOT


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
