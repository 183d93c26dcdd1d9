"""Train a MobileNet from a config file into a workdir (resumes when run again).

    python train.py --config=configs/fashion_mnist.py --workdir=runs/fmnist \
        [--config.train.epochs=3 ...] [--dry_run]
"""

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
from absl import flags
from ml_collections import config_flags

from mnv2_tf import cli
from mnv2_tf.train import dry_run, trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (local, Drive or gs://).")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Build everything and run a few steps on tfds.testing.mock_data."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    config = cli.config_value(_CONFIG)
    if _DRY_RUN.value:
        dry_run.run(config, _WORKDIR.value)
    else:
        trainer.train(config, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
