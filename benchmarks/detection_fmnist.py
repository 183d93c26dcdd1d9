"""The detection default, end to end on this machine: SSDLite on Fashion-MNIST composites.

    python benchmarks/detection_fmnist.py [--config=configs/detection_fmnist.py]
        [--workdir=/tmp/mnv2_detection] [--docs=docs/detection]
        [--out=benchmarks/results/detection_fmnist.json]

Runs the README's detection command (`pipeline.py --config=configs/detection_fmnist.py`:
fine-tune from the named backbone, export float32 / int8 / QAT int8 with the LiteRT
self-check, desktop latency, report) in a fresh workdir, then the same config from scratch
beside it (`--config.model.init_from=None`, the same schedule: train.py only; --noscratch
skips it), and writes their figures and the issue's targets, each with whether it was met:
  - the fine-tuned float (Keras) model's mAP@.5 >= 0.80 on the 1,000 test composites within
    45 minutes of fine-tuning wall time (the trainer's, evaluations included);
  - mAP@[.5:.95] through LiteRT within 1.5 points of the float model for int8, 0.5 for QAT
    int8, 0.2 for the float32 `.tflite`;
  - desktop latency of the float32 and int8 detectors at 1 and 2 threads.
The composites and the backbone (built once, cached; the paper's budgets leave ImageNet
training out too) are made first if missing and timed apart; the backbone's own top-1 and
training time are recorded.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

import common  # benchmarks/common.py: the script's own folder is on sys.path
from mnv2_tf import config as config_lib
from mnv2_tf.data import synthetic

_CONFIG = flags.DEFINE_string("config", "configs/detection_fmnist.py", "The pipeline's --config.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/mnv2_detection", "A fresh workdir (emptied).")
_DOCS = flags.DEFINE_string("docs", os.path.join(common.ROOT, "docs", "detection"), "Report copy.")
_OUT = flags.DEFINE_string("out", common.results_path("detection_fmnist"), "JSON output.")
_CONTINUE = flags.DEFINE_string(
    "continue_from",
    None,
    "The pipeline.log of an interrupted run of this script in --workdir: "
    "the pipeline resumes there (finished stages skipped) and the wall time is that log's last "
    "timestamp plus this invocation's.",
)

_SCRATCH = flags.DEFINE_bool("scratch", True, "Train the from-scratch baseline beside it.")
_REUSE = flags.DEFINE_bool("reuse", False, "Read the finished pipeline run in --workdir.")

TARGETS = {
    "map50": 0.80,
    "train_min": 45.0,
    "int8_gap": 0.015,
    "qat_gap": 0.005,
    "float32_gap": 0.002,
}


def main(argv):
    del argv
    config = config_lib.load_file(_CONFIG.value)
    start = time.time()
    synthetic.resolve(config.data)  # the composites, written once (timed apart)
    data_seconds = time.time() - start
    backbone = common.backbone_before(config)

    earlier = common.read_pipeline_log(_CONTINUE.value) if _CONTINUE.value else []
    if _REUSE.value:  # the finished run's own log: its lines and their seconds
        lines = common.read_pipeline_log(os.path.join(_WORKDIR.value, "pipeline.log"))
        wall = lines[-1][0]
    else:
        wall, lines = common.run_pipeline(_CONFIG.value, _WORKDIR.value, fresh=not earlier)
    if earlier:  # the interrupted invocation's lines first, this one's after them
        offset = earlier[-1][0]
        lines = [*earlier, *[(t + offset, text) for t, text in lines]]
        wall += offset
    workdir = _WORKDIR.value
    report, export, metrics = common.read_run(workdir)
    best = max(metrics, key=lambda m: m["eval_map"])
    final = metrics[-1]
    models = export["models"]
    keras_map = models["float32"]["keras_map"]  # the exported (final) float model's
    tflite = {
        mode: {
            "map": m["map"], "map50": m["map50"], "gap_map": m["map"] - keras_map,
            "gap_map50": m["map50"] - m["keras_map50"], "check": m["check"],
            "size_bytes": m["size_bytes"],
        }
        for mode, m in models.items()
    }  # fmt: skip
    latency = common.desktop_latency(report)
    gaps = {"int8": "int8_gap", "qat": "qat_gap", "float32": "float32_gap"}
    met = {
        "map50": final["eval_map50"] >= TARGETS["map50"],
        "train_min": final["wall_time_s"] / 60 <= TARGETS["train_min"],
        **{
            key: abs(tflite[mode]["gap_map"]) <= TARGETS[key]
            for mode, key in gaps.items() if mode in tflite
        },
    }  # fmt: skip
    common.copy_report(workdir, _DOCS.value)
    scratch = common.scratch_beside(_CONFIG.value, workdir + "_scratch") if _SCRATCH.value else None
    results = {
        **common.dense_header(_CONFIG.value, config, data_seconds, backbone),
        "train_wall_time_min": round(final["wall_time_s"] / 60, 2),
        "wall_time_s": round(wall, 1),
        "continued_from": _CONTINUE.value
        and {
            "seconds": earlier[-1][0],
            "why": "the first invocation's export failed: its source files were edited while "
            "it ran (autograph reads a function's source when it converts it), so the "
            "pipeline resumed in the same workdir",
        },
        "wall_time_min": round(wall / 60, 2),
        "stage_seconds": common.stage_times(lines, wall),
        "epochs": len(metrics),
        "final_eval": {k: v for k, v in final.items() if k.startswith("eval_")},
        "best_epoch": best["epoch"],
        "best_eval_map": best["eval_map"],
        "keras_map_exported": keras_map,
        "tflite": tflite,
        "latency_desktop": latency,
        "from_scratch": scratch,
        "targets": TARGETS,
        "met": met,
        "docs": os.path.relpath(_DOCS.value, common.ROOT),
    }
    common.write_results(_OUT.value, results)
    print(
        f"detection: {final['wall_time_s'] / 60:.1f} min of training ({wall / 60:.1f} in all), "
        f"float mAP@.5 {final['eval_map50']:.4f} mAP "
        f"{final['eval_map']:.4f}; LiteRT mAP "
        + ", ".join(f"{k} {v['map']:.4f}" for k, v in tflite.items())
        + (f"; from scratch mAP@.5 {scratch['final_eval']['eval_map50']:.4f}" if scratch else "")
        + f"; met {met}"
    )


if __name__ == "__main__":
    app.run(main)
