"""The task seam: a second task, written here, trains, exports and self-checks through the
same trainer, exporter, pipeline stages and report as classification; the stages name no
task; the classification task's pieces."""

import json
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mnv2_tf import tasks
from mnv2_tf.errors import UserError
from mnv2_tf.export import convert
from mnv2_tf.pipeline import report, stages
from mnv2_tf.tasks import base
from tests.test_train import needs_fmnist, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
STRIDE = 8  # the tiny config's network: stem stride removed, output stride 8


class PixelEvaluator(base.Evaluator):
    def __init__(self):
        self.correct = self.pixels = self.class_correct = self.count = 0.0

    def update(self, batch, outputs):
        pixel_logits, class_logits = outputs
        valid = batch["valid"] > 0
        hits = pixel_logits.argmax(-1) == batch["pixels"]
        self.correct += float(hits[valid].sum())
        self.pixels += float(hits[valid].size)
        self.class_correct += float((class_logits.argmax(-1) == batch["label"])[valid].sum())
        self.count += float(valid.sum())

    def result(self):
        return {
            "pixel_accuracy": self.correct / max(self.pixels, 1.0),
            "top1": self.class_correct / max(self.count, 1.0),
            "examples": round(self.count),
        }


class PixelComparison(base.Comparison):
    def __init__(self):
        self.agree = self.pixels = self.examples = 0
        self.max_abs_error = 0.0

    def add(self, batch, outputs, reference):
        ours, theirs = outputs["pixel_probabilities"], reference["pixel_probabilities"]
        self.agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        self.pixels += ours[..., 0].size
        self.examples += len(ours)
        for name in outputs:
            error = np.abs(outputs[name] - reference[name]).max()
            self.max_abs_error = max(self.max_abs_error, float(error))

    def summary(self):
        return {
            "eval_examples": self.examples,
            "pixel_agreement": self.agree / max(self.pixels, 1),
            "max_abs_error": self.max_abs_error,
        }


class PixelTask(base.Task):
    """Foreground pixels (a per-pixel label at stride 8) and the item's class: a non-scalar
    label and two outputs, as segmentation and detection will have."""

    name = "test_pixels"
    best_metric = "eval_pixel_accuracy"
    best_label = "pixel accuracy"
    headline = "pixel_agreement"
    headline_label = "pixel agreement"
    export_columns = (base.Column("pixel_agreement", "pixel agreement"),)
    summary_columns = (base.Column("pixel_agreement", "pixel agreement", "pct"),)

    def _heads(self, activation):
        backbone = self.build_backbone(include_top=False)
        features = backbone.output
        pixels = tf_keras.layers.Conv2D(2, 1, name="pixel_head", activation=activation)(features)
        pooled = tf_keras.layers.GlobalAveragePooling2D()(features)
        classes = tf_keras.layers.Dense(self.num_classes, name="class_head", activation=activation)(
            pooled
        )
        return tf_keras.Model(backbone.input, [pixels, classes])

    def build_model(self):
        return self._heads(None)

    def build_inference_model(self):
        return self._heads("softmax")

    def example_fn(self, source, preprocessing, training):
        image_fn = super().example_fn(source, preprocessing, training)

        def fn(example):
            example = image_fn(example)
            gray = tf.reduce_mean(example["image"], -1, keepdims=True)
            coarse = tf.nn.avg_pool2d(gray[None], STRIDE, STRIDE, "VALID")[0, ..., 0]
            return {**example, "pixels": tf.cast(coarse > -0.8, tf.int64)}

        return fn

    def blank_labels(self, preprocessing):
        side = preprocessing.input_size // STRIDE
        return {"label": tf.constant(0, tf.int64), "pixels": tf.zeros([side, side], tf.int64)}

    def loss(self, batch, outputs):
        pixel_logits, class_logits = outputs
        per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(batch["pixels"], pixel_logits)
        per_image = tf.nn.sparse_softmax_cross_entropy_with_logits(batch["label"], class_logits)
        return tf.reduce_mean(per_pixel, axis=[1, 2]) + per_image

    def evaluator(self):
        return PixelEvaluator()

    def serving_outputs(self, model, images):
        pixels, classes = model(images, training=False)
        return {"pixel_probabilities": pixels, "class_probabilities": classes}

    def comparison(self):
        return PixelComparison()

    def check(self, mode, summary):
        if mode == "float32":
            ok = summary["max_abs_error"] <= 1e-4
            return "passed" if ok else f"failed: max output error {summary['max_abs_error']:.2g}"
        agreement = summary["pixel_agreement"]
        return "passed" if agreement >= 0.9 else f"failed: pixel agreement {agreement:.3f}"


@needs_fmnist
def test_a_second_task_trains_exports_and_self_checks_through_the_seam(tmp_path, monkeypatch):
    monkeypatch.setitem(tasks.TASKS, PixelTask.name, PixelTask)
    config = tiny_config(
        **{
            "data.max_train_examples": 1024,
            "train.steps_per_epoch": 16,
            "train.epochs": 2,
            "model.output_stride": STRIDE,
            "model.atrous": False,
            "model.blocks": ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 1, 2)),
        }
    )
    with config.unlocked():
        config.task = PixelTask.name
        config.export.modes = "float32,int8"
        config.export.calibration_steps = 2
        config.bench.threads = "1"
        config.bench.warmup_runs, config.bench.num_runs = 1, 3
    workdir = tmp_path / "run"
    runs = stages.run(config, str(workdir), log=lambda *_: None)
    report.write(runs, str(workdir))  # as pipeline.py does

    metrics = json.loads((workdir / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert {"eval_pixel_accuracy", "eval_top1", "eval_examples"} <= set(metrics[-1])
    assert "train_top1" not in metrics[-1]  # the task's own training figures (none)
    assert metrics[-1]["eval_pixel_accuracy"] > 0.8  # foreground is easy; chance is ~0.5
    assert (workdir / "best" / "model.h5").exists()
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["task"] == PixelTask.name

    export = json.loads((workdir / "export" / "export_report.json").read_text())
    assert export["task"] == PixelTask.name
    for mode in ("float32", "int8"):
        entry = export["models"][mode]
        assert entry["check"] == "passed", (mode, entry)
        assert [o["shape"][1:] for o in entry["outputs"]] in ([[4, 4, 2], [10]], [[10], [4, 4, 2]])
    assert export["models"]["int8"]["float_ops"] == []
    interpreter = convert.load_interpreter((workdir / "export" / "model_int8.tflite").read_bytes())
    names = set(interpreter.get_signature_list()["serving_default"]["outputs"])
    assert names == {"pixel_probabilities", "class_probabilities"}

    md = (workdir / "report.md").read_text()
    assert "pixel agreement" in md and "final eval pixel accuracy" in md
    row = json.loads((workdir / "report.json").read_text())["rows"][0]
    assert row["task"] == PixelTask.name and row["headline"] == row["pixel_agreement"]
    assert runs[0]["benchmark"] and all(b["median_us"] > 0 for b in runs[0]["benchmark"])
    # No MediaPipe Tasks API for this task: the MediaPipe check says so in one line.
    from mnv2_tf.export import mediapipe_check

    with pytest.raises(
        UserError, match=r"^the test_pixels task has no MediaPipe Tasks API: there is no client"
    ):
        mediapipe_check.check(str(workdir), python="not run")


# The stages that every task shares name none: what differs lives in mnv2_tf/tasks/.
SHARED = [
    "mnv2_tf/train/trainer.py",
    "mnv2_tf/export/exporter.py",
    "mnv2_tf/export/evaluate.py",
    "mnv2_tf/export/convert.py",
    "mnv2_tf/export/qat.py",
    "mnv2_tf/export/mediapipe_check.py",
    "mnv2_tf/pipeline/stages.py",
    "mnv2_tf/pipeline/report.py",
]


@pytest.mark.parametrize("path", SHARED)
def test_shared_stages_hold_no_classification_code(path):
    text = (ROOT / path).read_text()
    found = re.findall(r"top1|top-1|softmax|categorical|argmax|probabilities", text, re.I)
    assert not found, f"{path}: {sorted(set(found))}"


def test_no_module_outside_train_imports_from_the_trainer():
    """The I/O helpers live in mnv2_tf/fileio.py; other stages call `trainer.train` only."""
    files = [
        *(ROOT / "mnv2_tf").rglob("*.py"),
        *ROOT.glob("*.py"),
        *(ROOT / "benchmarks").glob("*.py"),
    ]
    importers = [
        f.relative_to(ROOT).as_posix()
        for f in files
        if "from mnv2_tf.train.trainer import" in f.read_text()
    ]
    assert importers == []


# What a task may import: models, data, its own machinery, the file I/O, config, errors and
# the plain-data declarations of its outputs (never a stage: train/, export/, pipeline/).
TASK_IMPORTS = ("models", "data", "detection", "segmentation", "fileio", "config", "errors",
                "app_io", "tasks")  # fmt: skip


def _mnv2_imports(path: pathlib.Path) -> set[str]:
    """The mnv2_tf modules a file imports (`from mnv2_tf import x` counts as mnv2_tf.x)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mnv2_tf.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mnv2_tf"):
            if node.module == "mnv2_tf":
                found |= {f"mnv2_tf.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


def test_tasks_import_no_stage():
    for path in sorted((ROOT / "mnv2_tf" / "tasks").glob("*.py")):
        stray = {m for m in _mnv2_imports(path) if m.split(".")[1] not in TASK_IMPORTS}
        assert not stray, f"{path.name} imports {sorted(stray)}"


def test_no_task_name_comparison_outside_tasks():
    """What differs by task is the task's: no stage, script or benchmark asks which it is."""
    pattern = re.compile(r"""(task\.name|\.task)\s*[!=]=|[!=]=\s*(task\.name|config\.task)\b""")
    files = [
        *(ROOT / "mnv2_tf").rglob("*.py"),
        *ROOT.glob("*.py"),
        *(ROOT / "benchmarks").glob("*.py"),
    ]
    found = [
        f"{f.relative_to(ROOT)}:{n}"
        for f in files
        if "tasks" not in f.relative_to(ROOT).parts
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_one_flatbuffer_reader_and_one_labels_reader():
    files = list((ROOT / "mnv2_tf").rglob("*.py"))
    readers = [f.name for f in files if re.search(r"unpack_from|flatbuffers\.table", f.read_text())]
    assert readers == ["flatbuffer.py"]
    labels = [f.name for f in files if "def read_labels" in f.read_text()]
    assert labels == ["sources.py"]


def test_unknown_task_is_a_one_line_error():
    config = tiny_config()
    with config.unlocked():
        config.task = "detection3d"
    with pytest.raises(Exception, match=r"unknown task 'detection3d'; config\.task must be one of"):
        tasks.get(config, 10)
