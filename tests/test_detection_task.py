"""Detection end to end on a tiny SSDLite: train on COCO-format composites, export float32
and int8 (uint8 pixels in) ending in TFLite_Detection_PostProcess, self-check through
LiteRT, benchmark, draw and report, through the same stages as classification."""

import json

import numpy as np
import pytest

from mnv2_tf import config as config_lib
from mnv2_tf import tasks
from mnv2_tf.data import synthetic
from mnv2_tf.export import convert, evaluate, flatbuffer, metadata
from mnv2_tf.pipeline import report, stages
from mnv2_tf.tasks import detection as detection_task
from tests.conftest import built_once, read_only_tree, tree_digest
from tests.test_train import needs_fmnist

# The tiny detector: MobileNetV2 0.35 with a 4-row table at 64 px (feature maps 4, 4, 2, 1,
# 1, 1), 96 training composites, 2 epochs.
TINY_TABLE = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2))


def tiny_detection_config(data_dir: str, **overrides):
    config = config_lib.load_file("configs/detection_fmnist.py:quick")
    values = {
        "data.data_dir": data_dir, "data.synthetic": False, "data.max_train_examples": None,
        "data.max_eval_examples": None, "model.input_size": 64, "model.blocks": TINY_TABLE,
        "train.batch_size": 32, "train.epochs": 2, "train.steps_per_loop": 3,
        "train.precise_bn_images": 64, "train.save_saved_model": False,
        "export.modes": "float32,int8", "export.image_input": "uint8",
        "export.calibration_steps": 1, "export.eval_batch_size": 16,
        "bench.warmup_runs": 1, "bench.num_runs": 3, "bench.threads": "1",
        **overrides,
    }  # fmt: skip
    return config_lib.set_fields(config, values)


@pytest.fixture(scope="session")
def detection_run(tmp_path_factory):
    def build(folder):
        synthetic.generate(str(folder / "data"), train_images=96, test_images=24, size=80,
                           seed=5, log=lambda *_: None)  # fmt: skip
        config = tiny_detection_config(str(folder / "data" / "coco"))
        # The data as a user holds it: immutable while every stage reads it (train, export,
        # LiteRT evaluation, examples), and checksummed before and after.
        (folder / "data_digest.json").write_text(json.dumps(tree_digest(folder / "data")))
        with read_only_tree(folder / "data") as immutable:
            runs = stages.run(config, str(folder / "run"))
            report.write(runs, str(folder / "run"))
        (folder / "data_immutable").write_text(str(immutable))

    return built_once(tmp_path_factory, "detection_run", build) / "run"


@needs_fmnist
def test_every_stage_left_the_coco_data_as_it_was(detection_run):
    folder = detection_run.parent
    assert (folder / "data_immutable").read_text() == "True"  # chattr +i held while it ran
    assert tree_digest(folder / "data") == json.loads((folder / "data_digest.json").read_text())


@needs_fmnist
def test_training_writes_coco_metrics_and_picks_best_by_map(detection_run):
    metrics = json.loads((detection_run / "metrics.json").read_text())
    assert len(metrics) == 2
    for m in metrics:
        assert {"eval_map", "eval_map50", "eval_ar100", "train_matched_anchors"} <= set(m)
        assert m["eval_examples"] == 24
        assert sum(k.startswith("eval_ap/") for k in m) == 10  # one AP per class
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert (detection_run / "best" / "model.h5").exists()
    saved = json.loads((detection_run / "config.json").read_text())
    assert saved["task"] == "detection" and saved["dataset"]["class_names"][0] == "T-shirt/top"


@needs_fmnist
def test_export_ends_in_the_postprocess_op_with_mediapipe_outputs(detection_run):
    export = json.loads((detection_run / "export" / "export_report.json").read_text())
    assert export["task"] == "detection"
    for mode in ("float32", "int8"):
        entry = export["models"][mode]
        content = (detection_run / "export" / entry["file"]).read_bytes()
        info = convert.inspect(content)
        assert info.ops.get("TFLite_Detection_PostProcess") == 1
        # uint8 camera pixels in, at the post-process op's batch of 1
        assert [(i.dtype, i.shape) for i in info.inputs] == [("uint8", [1, 64, 64, 3])]
        # float32 outputs in MediaPipe's order: location, category, score, count
        assert [(o.dtype, o.shape) for o in info.outputs] == [
            ("float32", [1, 100, 4]), ("float32", [1, 100]), ("float32", [1, 100]),
            ("float32", [1]),
        ]  # fmt: skip
        interpreter = convert.load_interpreter(content)
        names = interpreter.get_signature_list()["serving_default"]["outputs"]
        runner = interpreter.get_signature_runner().get_output_details()
        by_position = [d["index"] for d in interpreter.get_output_details()]
        assert by_position == [runner[n]["index"] for n in detection_task.postprocess.OUTPUT_NAMES]
        assert sorted(names) == sorted(detection_task.postprocess.OUTPUT_NAMES)
        # Output roles as MediaPipe's ObjectDetector reads them, labels on the category.
        meta = metadata.read(content)
        assert [o.name for o in meta.outputs] == [
            "location", "category", "score", "number of detections",
        ]  # fmt: skip
        location, category = meta.outputs[:2]
        assert (location.content, location.box_index, location.box_type) == (
            "bounding_box", (1, 0, 3, 2), "BOUNDARIES",
        )  # fmt: skip
        assert (location.box_coordinates, location.value_range) == ("RATIO", (2, 2))
        assert category.labels == ("labels.txt", "TENSOR_VALUE_LABELS")
        labels = metadata.packed_files(content)["labels.txt"].decode().splitlines()
        assert labels == (detection_run / "export" / "labels.txt").read_text().splitlines()
        assert len(labels) == export["config"]["num_classes"] == 10
        assert entry["mediapipe"] == "ready"
    int8 = export["models"]["int8"]
    assert int8["float_ops"] == []  # every compute op before the post-process is int8
    float32 = export["models"]["float32"]
    assert float32["check"] == "passed"
    assert abs(float32["map"] - float32["keras_map"]) <= detection_task.MAX_FLOAT32_MAP_GAP
    assert float32["count_agreement"] == 1.0 and float32["max_top_score_error"] < 1e-3
    assert not int8["check"].startswith("failed")


@needs_fmnist
def test_runner_detections_match_the_keras_postprocess(detection_run):
    """The .tflite's op and the Keras model's TensorFlow post-process give the same boxes."""
    from mnv2_tf.export import run as run_lib

    run = run_lib.load(str(detection_run), "final")
    content = (detection_run / "export" / "model_float32.tflite").read_bytes()
    runner = evaluate.Runner(content, run.preprocessing, raw_pixels=True)
    ds, _ = run.task.dataset(run.preprocessing, "test", training=False, batch_size=8)
    batch = next(ds.as_numpy_iterator())
    images = evaluate.on_pixel_grid(batch["image"], run.preprocessing)
    ours = runner(images)
    theirs = {k: np.asarray(v) for k, v in run.task.serving_outputs(run.model, images).items()}
    for i in range(len(images)):
        n = int(theirs["num_detections"][i])
        assert int(ours["num_detections"][i]) == n
        # The same detections; among equal scores (a barely trained model has many) the two
        # may list them in another order, so each of ours is matched to one of theirs.
        unused = list(range(n))
        for j in range(n):
            box, cls = ours["detection_boxes"][i, j], ours["detection_classes"][i, j]
            score = ours["detection_scores"][i, j]
            match = next(
                k for k in unused
                if abs(theirs["detection_scores"][i, k] - score) < 1e-4
                and np.abs(theirs["detection_boxes"][i, k] - box).max() < 1e-3
                and theirs["detection_classes"][i, k] == cls
            )  # fmt: skip
            unused.remove(match)
        np.testing.assert_allclose(
            ours["detection_scores"][i, :n], theirs["detection_scores"][i, :n], atol=1e-4
        )


@needs_fmnist
def test_report_has_the_map_table_latency_and_the_examples_grid(detection_run):
    text = (detection_run / "report.md").read_text()
    assert "mAP Keras" in text and "mAP@.5 TFLite" in text and "median ms 1T" in text
    assert "![Eval images, run](examples.png)" in text
    png = (detection_run / "examples.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    bench = json.loads((detection_run / "benchmark.json").read_text())
    assert {r["mode"] for r in bench["results"]} == {"float32", "int8"}


def test_output_order_rewrite_is_exact():
    """The flatbuffer edit moves only the output list: same bytes elsewhere, same names."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def serve(x):
        return {"a": x * 2, "b": x * 3, "c": tf.reduce_sum(x, 1), "d": x[:, 0]}

    module = tf.Module()
    content = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], module
    ).convert()
    ordered = convert.in_output_order(content, ["a", "b", "c", "d"])
    assert len(ordered) == len(content)
    _, outputs = flatbuffer.output_positions(ordered)
    assert sum(x != y for x, y in zip(ordered, content, strict=True)) <= 4 * len(outputs)
    interpreter = convert.load_interpreter(ordered)
    detail = interpreter.get_signature_runner().get_output_details()
    assert [d["index"] for d in interpreter.get_output_details()] == [
        detail[n]["index"] for n in "abcd"
    ]
    result = interpreter.get_signature_runner()(x=np.ones((1, 4), np.float32))
    np.testing.assert_allclose(result["c"], [4.0])
    with pytest.raises(Exception, match="not a valid TFLite flatbuffer"):
        flatbuffer.output_positions(b"\x00\x01")


def test_detection_task_is_registered_and_checks():
    assert tasks.task_class("detection") is detection_task.Detection
    check = detection_task.Detection.check
    base = {"eval_examples": 10, "map": 0.3, "keras_map": 0.3, "map_gap": 0.0,
            "map50": 0.6, "keras_map50": 0.6}  # fmt: skip
    assert check(None, "float32", base) == "passed"
    assert check(None, "float32", {**base, "map_gap": 0.02}).startswith("failed")
    assert check(None, "int8", {**base, "map50": 0.2}).startswith("failed")
    assert check(None, "int8", {**base, "keras_map50": 0.01}).startswith("unchecked")
    assert check(None, "int8", base) == "passed"


@pytest.mark.slow  # quantization-aware fine-tuning of the detector, then its conversion
@needs_fmnist
def test_qat_detector_is_int8_up_to_the_postprocess(detection_run, tmp_path):
    from mnv2_tf.export import exporter

    report_ = exporter.export(
        str(detection_run), {"modes": "qat", "qat_epochs": 0.5, "image_input": "uint8"},
        output_dir=str(tmp_path),
    )  # fmt: skip
    qat = report_["models"]["qat"]
    assert qat["float_ops"] == [] and not qat["check"].startswith("failed")
    assert qat["qat"]["steps"] >= 1 and np.isfinite(qat["qat"]["train_loss"])
    info = convert.inspect((tmp_path / qat["file"]).read_bytes())
    assert info.ops.get("TFLite_Detection_PostProcess") == 1
    assert [o.dtype for o in info.outputs] == ["float32"] * 4


def test_detector_starts_from_imagenet_or_a_classification_run(tmp_path):
    """model.init_from: Keras' ImageNet .h5 (a no-top file here, as the official ones) or a
    classification workdir load the detector's backbone by layer name; the SSD layers keep
    their initialization."""
    import tf_keras

    from mnv2_tf.models import ssdlite
    from mnv2_tf.train import trainer

    keras = tf_keras.applications.MobileNetV2(
        alpha=0.35, input_shape=(96, 96, 3), include_top=False, weights=None
    )
    path = tmp_path / "imagenet_no_top.h5"
    keras.save_weights(str(path))
    detector = ssdlite.ssd(11, "mobilenet_v2", 0.35, 96)
    heads = {layer.name for layer in detector.layers if not detection_task._is_backbone(layer.name)}
    before = detector.get_layer("class_predictor_0").get_weights()[0].copy()
    trainer._init_from(detector, str(path), heads)
    for name in ("Conv1", "block_13_expand", "Conv_1"):
        np.testing.assert_array_equal(
            detector.get_layer(name).get_weights()[0], keras.get_layer(name).get_weights()[0]
        )
    np.testing.assert_array_equal(detector.get_layer("class_predictor_0").get_weights()[0], before)

    # A classification run's workdir (its best/model.h5, classifier and all): the backbone.
    classifier = tf_keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3),
                                                   classes=10, weights=None)  # fmt: skip
    (tmp_path / "run" / "best").mkdir(parents=True)
    classifier.save(tmp_path / "run" / "best" / "model.h5")
    init = trainer.resolve_init(
        config_lib.set_fields(
            config_lib.base_config(), {"model.init_from": str(tmp_path / "run")}
        ).model
    )
    trainer._init_from(detector, init["path"], heads)
    np.testing.assert_array_equal(
        detector.get_layer("block_13_expand").get_weights()[0],
        classifier.get_layer("block_13_expand").get_weights()[0],
    )


@pytest.mark.parametrize("reduce,count", [(True, 1917), (False, 1917 + 19 * 19 * 3)])
def test_predictor_outputs_line_up_with_the_anchors(reduce, count):
    from mnv2_tf.detection import boxes
    from mnv2_tf.models import ssdlite

    model = ssdlite.ssd(5, "mobilenet_v2", 0.35, 300, reduce_boxes_in_lowest_layer=reduce)
    sizes = ssdlite.feature_sizes(model)
    assert sizes == [19, 10, 5, 3, 2, 1]
    anchors = boxes.ssd_anchors(sizes, reduce_boxes_in_lowest_layer=reduce)
    assert [tuple(o.shape) for o in model.outputs] == [(None, count, 4), (None, count, 5)]
    assert len(anchors) == count
