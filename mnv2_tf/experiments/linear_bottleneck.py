"""Linear vs non-linear bottleneck (MobileNetV2 paper, Figure 6a).

The same MobileNetV2, trained at the same budget, once with the paper's linear projection
and once with ReLU6 after it; accuracy curves and final top-1 over seeds.

    python -m mnv2_tf.experiments.linear_bottleneck --out=docs/experiments/ablations
    python -m mnv2_tf.experiments.linear_bottleneck --out=/tmp/lb --quick   # the tests'
"""

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
from mnv2_tf.experiments import common

VARIANTS = {
    "linear bottleneck (paper)": {"model.linear_bottleneck": True, "model.shortcut": "bottleneck"},
    "ReLU6 after projection": {"model.linear_bottleneck": False, "model.shortcut": "bottleneck"},
}
CLAIM = (
    "Figure 6a (ImageNet): the linear bottleneck trains to a higher top-1 than a ReLU6 "
    "bottleneck throughout training; non-linearity in the low-dimensional bottleneck "
    "destroys information (Section 3.2, Figure 1)."
)


def main(argv):
    del argv
    common.ablation(
        "linear_bottleneck", "Linear vs ReLU6 bottleneck (paper Figure 6a)", VARIANTS, CLAIM
    )


if __name__ == "__main__":
    from mnv2_tf import cli

    common.define_budget_flags()
    cli.run(main)
