"""Measure .tflite latency on the desktop LiteRT interpreter or an Android phone over adb.

Not yet implemented: this entry point lands with its issue. It exits with status 2 so that
no script mistakes it for a finished stage.
"""

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
from mnv2_tf import cli
from mnv2_tf.errors import UserError


def main(argv: list[str]) -> None:
    del argv
    raise UserError("benchmark.py is not yet implemented")


if __name__ == "__main__":
    cli.run(main)
