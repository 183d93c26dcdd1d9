"""Export a training workdir to TFLite (float32, float16, dynamic, int8 PTQ, QAT int8).

Not yet implemented: this entry point lands with its issue. It exits with status 2 so that
no script mistakes it for a finished stage.
"""

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
from mnv2_tf import cli
from mnv2_tf.errors import UserError


def main(argv: list[str]) -> None:
    del argv
    raise UserError("export_tflite.py is not yet implemented")


if __name__ == "__main__":
    cli.run(main)
