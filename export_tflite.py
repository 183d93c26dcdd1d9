"""Export a training workdir to TFLite: float32, float16, dynamic, int8 PTQ, QAT int8.

    python export_tflite.py --workdir=runs/fmnist --quantize=float32,int8,qat
    python export_tflite.py --workdir=runs/fmnist --quantize=int8 --image_input=uint8 \
        --io_type=uint8 --debug_quantization

Reads the architecture, preprocessing and data source from the workdir's config.json and
the weights from final/model.h5 (or the latest checkpoint's EMA weights). Writes one
.tflite per mode, labels.txt and export_report.json/.md into --output_dir
(default <workdir>/export). Each model is run with LiteRT on the eval split beside the
Keras model; a model that disagrees with it fails the export.
"""

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
from absl import flags

from mnv2_tf import cli
from mnv2_tf.export import convert, exporter, run

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to export.", required=True)
_QUANTIZE = flags.DEFINE_list(
    "quantize", ["float32", "int8"], f"Modes, comma-separated: {', '.join(convert.MODES)}."
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Default: <workdir>/export.")
_WEIGHTS = flags.DEFINE_enum(
    "weights",
    "final",
    list(run.WEIGHTS_CHOICES),
    "final (the finished run, or its latest checkpoint), best, or checkpoint.",
)
_CALIBRATION_STEPS = flags.DEFINE_integer(
    "calibration_steps",
    16,
    f"Batches of {exporter.CALIBRATION_BATCH} training images for int8 calibration.",
)
_IO_TYPE = flags.DEFINE_enum(
    "io_type", "int8", list(convert.IO_TYPES), "Input/output type of the integer models."
)
_IMAGE_INPUT = flags.DEFINE_enum(
    "image_input", None, ["uint8"], "uint8: raw RGB pixel input, normalization in the graph."
)
_ALLOW_FLOAT_OPS = flags.DEFINE_bool(
    "allow_float_ops", False, "Keep an integer model that still has float ops."
)
_PER_TENSOR = flags.DEFINE_bool(
    "per_tensor",
    False,
    "int8 PTQ: one weight scale per tensor instead of per output channel (a smaller file; "
    "check the accuracy it reports, depthwise layers can lose).",
)
_DEBUG = flags.DEFINE_bool(
    "debug_quantization", False, "Write the per-layer int8 error table (QuantizationDebugger)."
)
_QAT_EPOCHS = flags.DEFINE_float("qat_epochs", 1.0, "Quantization-aware fine-tuning epochs.")
_QAT_LR = flags.DEFINE_float("qat_learning_rate", 1e-3, "QAT peak learning rate (cosine to 0).")
_MAX_EVAL = flags.DEFINE_integer("max_eval_examples", None, "Evaluate on the first N images.")
_NO_CHECK = flags.DEFINE_bool(
    "skip_check", False, "Keep files that fail the Keras-vs-TFLite self-check."
)


def main(argv: list[str]) -> None:
    del argv
    options = exporter.Options(
        modes=tuple(_QUANTIZE.value),
        output_dir=_OUTPUT_DIR.value,
        weights=_WEIGHTS.value,
        calibration_steps=_CALIBRATION_STEPS.value,
        io_type=_IO_TYPE.value,
        image_input=_IMAGE_INPUT.value,
        allow_float_ops=_ALLOW_FLOAT_OPS.value,
        per_tensor=_PER_TENSOR.value,
        debug_quantization=_DEBUG.value,
        qat_epochs=_QAT_EPOCHS.value,
        qat_learning_rate=_QAT_LR.value,
        max_eval_examples=_MAX_EVAL.value,
        check=not _NO_CHECK.value,
    )
    report = exporter.export(_WORKDIR.value, options)
    print(exporter.markdown(report))


if __name__ == "__main__":
    cli.run(main)
