"""Export a training workdir to TFLite: float32, float16, dynamic, int8 PTQ, QAT int8.

    python export_tflite.py --workdir=runs/fmnist --config.export.modes=float32,int8,qat
    python export_tflite.py --workdir=runs/fmnist --config.export.modes=int8 \
        --config.export.labels=my_labels.txt --config.export.mediapipe=True
    python export_tflite.py --workdir=runs/fmnist --config.export.image_input= \
        --config.export.io_type=float32 --config.export.debug_quantization=True
    python export_tflite.py --workdir=runs/seg --category_mask   # a segmenter's class mask

Reads the task, architecture, preprocessing, data source and export settings from the
workdir's config.json (the config it was trained with); `--config.export.FIELD=VALUE`
changes a setting for this export (the fields: mnv2_tf/config.py, section `export`). The
weights come from final/model.h5 (or the latest checkpoint's EMA weights). Writes one
.tflite per mode, labels.txt and export_report.json/.md into --output_dir (default
<workdir>/export). Each model is run with LiteRT on the eval split beside the Keras model;
a model that fails the task's self-check fails the export.
"""

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
from absl import flags

from mnv2_tf import cli
from mnv2_tf import config as config_lib
from mnv2_tf.export import exporter, run

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to export.", required=True)
# Only the export section can be overridden here: the rest is the run's own.
_CONFIG = cli.define_config_dict(
    "config",
    cli.sections(config_lib.base_config(), "export"),
    "Export settings to change (--config.export.FIELD=VALUE); the rest is the run's.",
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Default: <workdir>/export.")
_WEIGHTS = flags.DEFINE_enum(
    "weights",
    "final",
    list(run.WEIGHTS_CHOICES),
    "final (the finished run, or its latest checkpoint), best, or checkpoint.",
)
_CATEGORY_MASK = flags.DEFINE_bool(
    "category_mask",
    None,
    "Segmentation: output the class id per pixel (uint8) instead of the per-pixel scores "
    "(--config.export.category_mask).",
)
_NO_CHECK = flags.DEFINE_bool(
    "skip_check", False, "Keep files that fail the Keras-vs-TFLite self-check."
)


def main(argv: list[str]) -> None:
    del argv
    overrides = cli.overrides(flags.FLAGS["config"], "export")
    if _CATEGORY_MASK.value is not None:
        overrides["category_mask"] = _CATEGORY_MASK.value
    report = exporter.export(
        _WORKDIR.value,
        overrides,
        output_dir=_OUTPUT_DIR.value,
        weights=_WEIGHTS.value,
        check=not _NO_CHECK.value,
    )
    print(exporter.markdown(report))


if __name__ == "__main__":
    cli.run(main)
