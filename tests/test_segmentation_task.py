"""Segmentation end to end on a tiny Mobile DeepLabv3: train on VOC-layout composites, export
float32 and int8 (uint8 pixels in, a uint8 category mask out) at batch 1, self-check through
LiteRT, benchmark, draw and report, through the same stages as classification."""

import json

import numpy as np
import pytest

from mnv2_tf import config as config_lib
from mnv2_tf import tasks
from mnv2_tf.data import synthetic
from mnv2_tf.export import convert, evaluate, metadata
from mnv2_tf.pipeline import report, stages
from mnv2_tf.tasks import segmentation as segmentation_task
from tests.conftest import built_once, read_only_tree, tree_digest
from tests.test_train import needs_fmnist

# MobileNetV2 0.35 with a 5-row table at 64 px, output stride 8: the last two rows are
# dilated (rate 2), as the paper's network past its output stride.
TINY_TABLE = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 48, 2, 2), (6, 64, 1, 1))


def tiny_segmentation_config(data_dir: str, **overrides):
    config = config_lib.load_file("configs/segmentation_fmnist.py:quick")
    values = {
        "data.data_dir": data_dir, "data.synthetic": False, "data.max_train_examples": None,
        "data.max_eval_examples": None, "model.input_size": 64, "model.blocks": TINY_TABLE,
        "model.alpha": 0.35, "model.output_stride": 8, "segmentation.depth": 32,
        "train.batch_size": 16, "train.epochs": 2, "train.steps_per_loop": 3,
        "train.precise_bn_images": 32, "train.save_saved_model": False,
        "export.modes": "float32,int8", "export.image_input": "uint8",
        "export.category_mask": True, "export.calibration_steps": 1,
        "export.eval_batch_size": 8, "bench.warmup_runs": 1, "bench.num_runs": 3,
        "bench.threads": "1",
        **overrides,
    }  # fmt: skip
    return config_lib.set_fields(config, values)


@pytest.fixture(scope="session")
def segmentation_run(tmp_path_factory):
    def build(folder):
        synthetic.generate(str(folder / "data"), train_images=64, test_images=12, size=64,
                           seed=7, log=lambda *_: None)  # fmt: skip
        config = tiny_segmentation_config(str(folder / "data" / "voc"))
        # The data as a user holds it: immutable while every stage reads it (train, export,
        # LiteRT evaluation, examples), and checksummed before and after.
        (folder / "data_digest.json").write_text(json.dumps(tree_digest(folder / "data")))
        with read_only_tree(folder / "data") as immutable:
            runs = stages.run(config, str(folder / "run"))
            report.write(runs, str(folder / "run"))
        (folder / "data_immutable").write_text(str(immutable))

    return built_once(tmp_path_factory, "segmentation_run", build) / "run"


@needs_fmnist
def test_every_stage_left_the_voc_data_as_it_was(segmentation_run):
    folder = segmentation_run.parent
    assert (folder / "data_immutable").read_text() == "True"  # chattr +i held while it ran
    assert tree_digest(folder / "data") == json.loads((folder / "data_digest.json").read_text())


@needs_fmnist
def test_training_writes_miou_per_class_and_picks_best_by_miou(segmentation_run):
    metrics = json.loads((segmentation_run / "metrics.json").read_text())
    assert len(metrics) == 2
    for m in metrics:
        assert {"eval_miou", "eval_pixel_accuracy", "train_pixel_accuracy"} <= set(m)
        assert m["eval_examples"] == 12 and 0 <= m["eval_miou"] <= 1
        assert "eval_iou/background" in m
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert (segmentation_run / "best" / "model.h5").exists()
    saved = json.loads((segmentation_run / "config.json").read_text())
    assert saved["task"] == "segmentation"
    assert saved["dataset"]["class_names"][:2] == ["background", "T-shirt/top"]


@needs_fmnist
def test_export_is_one_depthwise_op_per_block_at_batch_1_with_a_uint8_mask(segmentation_run):
    export = json.loads((segmentation_run / "export" / "export_report.json").read_text())
    assert export["task"] == "segmentation"
    for mode in ("float32", "int8"):
        entry = export["models"][mode]
        info = convert.inspect((segmentation_run / "export" / entry["file"]).read_bytes())
        assert [(i.dtype, i.shape) for i in info.inputs] == [("uint8", [1, 64, 64, 3])]
        assert [(o.dtype, o.shape) for o in info.outputs] == [("uint8", [1, 64, 64, 1])]
        # One DEPTHWISE_CONV_2D per block (8 here), the dilated ones too, with BN folded:
        # no SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND around them, no MUL of a BN (the float
        # model's one MUL is the uint8 input's normalization; int8 folds it).
        assert info.ops["DEPTHWISE_CONV_2D"] == 8 and "SPACE_TO_BATCH_ND" not in info.ops
        assert info.ops.get("MUL", 0) == (1 if mode == "float32" else 0)
        assert info.ops.get("ARG_MAX") == 1
        # A class-id mask: labels by value; MediaPipe's segmenter wants the scores instead.
        meta = metadata.read((segmentation_run / "export" / entry["file"]).read_bytes())
        assert meta.outputs[0].labels == ("labels.txt", "TENSOR_VALUE_LABELS")
        assert entry["mediapipe"].startswith("no: a category_mask output")
    assert export["models"]["int8"]["float_ops"] == []
    float32 = export["models"]["float32"]
    assert float32["check"] == "passed" and float32["pixel_agreement"] >= 0.999
    assert not export["models"]["int8"]["check"].startswith("failed")


@needs_fmnist
def test_a_dynamic_batch_would_lower_the_dilated_convs(segmentation_run):
    """Why the export fixes the batch: at any batch the converter lowers each dilated
    depthwise conv to SPACE_TO_BATCH_ND + DEPTHWISE_CONV_2D + BATCH_TO_SPACE_ND."""
    from mnv2_tf.export import run as run_lib

    run = run_lib.load(str(segmentation_run))
    content = convert.convert(run.model, "float32", run.preprocessing,
                              outputs=run.task.serving_outputs, batch_size=None)  # fmt: skip
    ops = convert.inspect(content).ops
    assert ops.get("SPACE_TO_BATCH_ND", 0) >= 2 and ops.get("BATCH_TO_SPACE_ND", 0) >= 2


@needs_fmnist
def test_scores_model_matches_keras_and_the_mask_ways_agree(segmentation_run, tmp_path):
    """The per-pixel scores export (export.category_mask off, as an override of the run's
    setting) gives Keras' probabilities; every way to the mask mostly agrees with the
    reference argmax."""
    from mnv2_tf.export import exporter
    from mnv2_tf.export import run as run_lib

    exported = exporter.export(
        str(segmentation_run), {"modes": "float32", "category_mask": False},
        output_dir=str(tmp_path), log=lambda *_: None,
    )  # fmt: skip
    assert exported["models"]["float32"]["check"] == "passed"
    content = (tmp_path / "model_float32.tflite").read_bytes()
    info = convert.inspect(content)
    assert [(o.dtype, o.shape) for o in info.outputs] == [("float32", [1, 64, 64, 11])]
    assert exported["models"]["float32"]["mediapipe"] == "ready"
    meta = metadata.read(content)
    (scores_meta,) = meta.outputs
    assert (scores_meta.name, scores_meta.content, scores_meta.value_range) == (
        "scores", "image", (1, 2),
    )  # fmt: skip
    assert scores_meta.labels == ("labels.txt", "TENSOR_AXIS_LABELS")
    assert metadata.read_segmenter_activation(meta.custom["SEGMENTER_METADATA"]) == "NONE"
    assert meta.min_parser_version == "1.5.0"  # custom metadata came with schema 1.5.0
    run = run_lib.load(str(segmentation_run))
    ds, _ = run.task.dataset(run.preprocessing, "test", training=False, batch_size=4)
    batch = next(ds.as_numpy_iterator())
    pixels = evaluate.on_pixel_grid(batch["image"], run.preprocessing)
    ours = evaluate.Runner(content, run.preprocessing, raw_pixels=True)(pixels)["scores"]
    logits = run.model(pixels, training=False)
    theirs = segmentation_task.scores(logits, 64).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    reference = segmentation_task.category_mask(logits, 64, "logits").numpy()
    assert (reference[..., 0] == theirs.argmax(-1)).all()
    for method, stride in (("scores_bilinear", 2), ("scores_bilinear", 4), ("argmax_nearest", 8)):
        mask = segmentation_task.category_mask(logits, 64, method, stride).numpy()
        assert mask.shape == (4, 64, 64, 1) and (mask == reference).mean() > 0.6


@needs_fmnist
def test_report_has_the_miou_table_latency_and_the_examples_grid(segmentation_run):
    text = (segmentation_run / "report.md").read_text()
    assert "mIOU Keras" in text and "mIOU TFLite" in text and "median ms 1T" in text
    assert "![Eval images, run](examples.png)" in text
    png = (segmentation_run / "examples.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_segmentation_task_is_registered_and_checks():
    assert tasks.task_class("segmentation") is segmentation_task.Segmentation
    check = segmentation_task.Segmentation.check
    base = {"eval_examples": 10, "miou": 0.5, "keras_miou": 0.5, "miou_gap": 0.0,
            "pixel_agreement": 1.0}  # fmt: skip
    assert check(None, "float32", base) == "passed"
    assert check(None, "float32", {**base, "miou_gap": 0.01}).startswith("failed")
    assert check(None, "float32", {**base, "pixel_agreement": 0.99}).startswith("failed")
    assert check(None, "int8", {**base, "pixel_agreement": 0.5}).startswith("failed")
    assert check(None, "int8", {**base, "keras_miou": 0.1}).startswith("unchecked")
    assert check(None, "int8", {**base, "pixel_agreement": 0.95}) == "passed"


@needs_fmnist
def test_voc_deeplab_dry_run_on_a_small_voc_folder(tmp_path):
    """The paper's VOC recipe, checked on a small VOC-layout folder (what `train.py
    --dry_run --config.data.data_dir=...` does): a few steps and an mIOU, no download."""
    from mnv2_tf.train import dry_run

    synthetic.generate(str(tmp_path / "data"), train_images=8, test_images=4, size=64, seed=2,
                       log=lambda *_: None)  # fmt: skip
    config = config_lib.load_file("configs/voc_deeplab.py")
    config.data.data_dir = str(tmp_path / "data" / "voc")
    config.data.train_split, config.data.eval_split = "train", "test"
    config.model.input_size = 65
    config.model.blocks = TINY_TABLE
    dry_run.run(config, str(tmp_path / "run"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [m["step"] for m in metrics] == [3] and "eval_miou" in metrics[0]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["schedule"] == "poly" and saved["model"]["output_stride"] == 16
    assert saved["model"]["init_from"] is None  # the ImageNet download is skipped
