"""The main job: train, export (float32, int8 PTQ, QAT int8), evaluate with LiteRT,
benchmark, and write report.md with its plots. Re-running skips finished stages.

    python pipeline.py --config=configs/fashion_mnist.py --workdir=runs/fmnist
    python pipeline.py --config=configs/fashion_mnist.py:quick --workdir=runs/quick
    python pipeline.py --config=configs/fashion_mnist.py --workdir=runs/sweep \
        --sweep="alpha:0.35,0.5,1.0" [--sweep="alpha:0.5;model:mobilenet_v2,mobilenet_v1"]
    python pipeline.py ... --config.export.modes=float32,int8 --config.export.per_tensor=True \
        --config.bench.threads=1,4 --config.export.qat_epochs=0.5
    python pipeline.py ... --android_binary=android_aarch64_benchmark_model [--serial=S]

Every stage's settings are the config's (`train`, `export`, `bench` sections), each
overridable with `--config.SECTION.FIELD=VALUE`.
"""

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
import os

from absl import flags
from ml_collections import config_flags

from mnv2_tf import cli, fileio
from mnv2_tf.bench import android
from mnv2_tf.pipeline import report, stages

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; re-run to resume.")
_SWEEP = flags.DEFINE_string(
    "sweep",
    None,
    "Grid, e.g. 'alpha:0.35,0.5,1.0;input_size:32,64' (fields: alpha, input_size, model).",
)
_ANDROID_BINARY = flags.DEFINE_string(
    "android_binary", None, "TFLite benchmark_model for the phone: adds its latency."
)
_SERIAL = flags.DEFINE_string("serial", None, "Android device serial (adb devices -l).")
_CPU_MASK = flags.DEFINE_string("cpu_mask", None, "Android taskset mask (hex).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    config = cli.config_value(_CONFIG)
    session = None
    if _ANDROID_BINARY.value:
        session = android.Session(
            android.AndroidOptions(
                benchmark_binary=_ANDROID_BINARY.value,
                serial=_SERIAL.value,
                cpu_mask=_CPU_MASK.value,
            )
        )
    fileio.makedirs(_WORKDIR.value)
    # Held from the first stage to the report: a second pipeline.py on this workdir stops
    # with one line naming this one.
    with fileio.workdir_lock(_WORKDIR.value, "pipeline.py"):
        runs = stages.run(config, _WORKDIR.value, _SWEEP.value, android=session)
        report.write(runs, _WORKDIR.value)
    print(f"wrote {os.path.join(_WORKDIR.value, 'report.md')}")


if __name__ == "__main__":
    cli.run(main)
