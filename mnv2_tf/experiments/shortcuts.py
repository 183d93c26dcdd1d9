"""Where the shortcut goes (MobileNetV2 paper, Figure 6b).

The same MobileNetV2, trained at the same budget, with the shortcut between bottlenecks
(the paper's inverted residual), between expansion layers (as a classic residual
bottleneck would place it), and with no shortcut; accuracy curves and final top-1 over seeds.
The "paper" variant is the same run as Figure 6a's linear bottleneck and is shared.

    python -m mnv2_tf.experiments.shortcuts --out=docs/experiments/ablations
    python -m mnv2_tf.experiments.shortcuts --out=/tmp/sc --quick   # the tests'
"""

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
from mnv2_tf.experiments import common

VARIANTS = {
    "between bottlenecks (paper)": {
        "model.linear_bottleneck": True,
        "model.shortcut": "bottleneck",
    },
    "between expansions": {"model.linear_bottleneck": True, "model.shortcut": "expansion"},
    "no shortcut": {"model.linear_bottleneck": True, "model.shortcut": "none"},
}
CLAIM = (
    "Figure 6b (ImageNet): the shortcut connecting bottlenecks trains to a higher top-1 "
    "than one connecting the expanded layers, and both beat no residual connection."
)


def main(argv):
    del argv
    common.ablation("shortcuts", "Shortcut placement (paper Figure 6b)", VARIANTS, CLAIM)


if __name__ == "__main__":
    from mnv2_tf import cli

    common.define_budget_flags()
    cli.run(main)
