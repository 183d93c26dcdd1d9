"""Export: every mode converts, runs in LiteRT and agrees with Keras; QAT wraps our models;
integer models hold no float op; the raw-pixel input; the self-check; bad input."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mnv2_tf import models
from mnv2_tf.config import base_config
from mnv2_tf.errors import UserError
from mnv2_tf.export import convert, evaluate, exporter, flatbuffer, metadata, qat
from mnv2_tf.export import run as run_lib
from mnv2_tf.models.common import DEFAULT_PREPROCESSING
from mnv2_tf.tasks import classification
from mnv2_tf.train import trainer
from tests.conftest import built_once
from tests.test_train import needs_fmnist, tiny_config


def probabilities(model, images):
    """A classifier's serving outputs (as `Classification.serving_outputs`)."""
    return {"probabilities": model(images, training=False)}


def export(workdir, out, **settings):
    """The export of `workdir` into `out` with `settings` over the run's export section."""
    return exporter.export(str(workdir), settings, output_dir=str(out), log=lambda *_: None)


ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """A tiny Fashion-MNIST run, trained far enough that its predictions are not a coin toss
    (built once per session; tests that change it copy it)."""
    config = tiny_config(
        **{
            "data.max_train_examples": 4096,
            "data.max_eval_examples": 200,
            "train.steps_per_epoch": 40,
            "train.epochs": 3,
            "train.learning_rate": 0.05,
            "train.warmup_epochs": 0.5,
            "train.ema_decay": 0.9,
            "model.bn_momentum": 0.9,
            # A reproducible fixture: the agreement the per-tensor test checks does not move
            # with the order a parallel map delivered the images in.
            "data.deterministic": True,
            "model.blocks": (),  # the paper's network: quantization is checked on it
        }
    )
    return built_once(tmp_path_factory, "export_run", lambda path: trainer.train(config, str(path)))


def export_cli(*args):
    return subprocess.run(
        [sys.executable, "export_tflite.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


@needs_fmnist
def test_float32_int8_export(workdir, tmp_path):
    """The default suite's export: float32 and int8 (QAT: the slow test below)."""
    report = export(workdir, tmp_path, modes="float32,int8", calibration_steps=2)
    assert sorted(p.name for p in tmp_path.glob("*.tflite")) == [
        "model_float32.tflite", "model_int8.tflite",
    ]  # fmt: skip
    for mode, entry in report["models"].items():
        assert entry["check"] == "passed", (mode, entry)
        assert entry["decided_examples"] >= classification.MIN_DECIDED, (mode, entry)
    assert report["models"]["float32"]["max_abs_error"] <= classification.MAX_FLOAT32_ERROR
    assert report["models"]["int8"]["float_ops"] == []
    # The defaults are the files an app loads: uint8 pixels in, uint8 probabilities out.
    int8 = report["models"]["int8"]
    assert int8["inputs"][0]["dtype"] == "uint8" and int8["outputs"][0]["dtype"] == "uint8"
    assert [m["mediapipe"] for m in report["models"].values()] == ["ready", "ready"]

    # The metadata, read back from the files with the schema.
    labels = (workdir / "labels.txt").read_text().splitlines()
    for mode, entry in report["models"].items():
        content = (tmp_path / entry["file"]).read_bytes()
        meta = metadata.read(content)
        assert meta.name == f"MobileNetV2 0.35 image classifier ({mode})"
        assert "alpha 0.35 image classifier at 32x32 px, 10 classes" in meta.description
        assert f"top-1 {entry['top1']:.4f} on 200 images" in meta.description
        (image,), (probabilities_,) = meta.inputs, meta.outputs
        assert (image.content, image.color_space, image.image_size) == ("image", "RGB", (32, 32))
        # float32: pixels in, normalized in the graph; int8: the uint8 input's own grid, one
        # pixel per level from the zero point, no half-level tie.
        if mode == "float32":
            assert image.normalization is None
        else:
            _, zero_point, _ = convert.inspect(content).input_grid
            assert image.normalization == ([zero_point], [127.5]) and zero_point in (127, 128)
        assert probabilities_.name == "probabilities"
        assert probabilities_.labels == ("labels.txt", "TENSOR_AXIS_LABELS")
        assert metadata.packed_files(content) == {"labels.txt": "\n".join(labels).encode() + b"\n"}
        assert meta.min_parser_version == "1.0.0"


def test_metadata_leaves_the_model_and_its_outputs_as_they_were(tmp_path):
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax")(x))
    data = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32)
    for mode in ("float32", "int8"):
        content = convert.convert(
            model, mode, DEFAULT_PREPROCESSING, outputs=probabilities,
            representative=lambda: iter([[data]]), image_input="uint8", io_type="uint8",
        )  # fmt: skip
        meta = metadata.Model(
            "m", "a description", "1", [metadata.Tensor("image", content="image")],
            [metadata.Tensor("probabilities", labels=("labels.txt", "TENSOR_AXIS_LABELS"))],
            custom={"SEGMENTER_METADATA": metadata.segmenter_options("SOFTMAX")},
        )  # fmt: skip
        written = metadata.write(content, meta, {"labels.txt": b"a\nb\nc\n"})
        # The old flatbuffer is kept byte for byte (16-byte aligned) inside the new one.
        flat = metadata.strip(written)
        assert flat.index(content) % 16 == 0
        back = metadata.read(written)
        assert back.outputs[0].labels == ("labels.txt", "TENSOR_AXIS_LABELS")
        assert metadata.read_segmenter_activation(back.custom["SEGMENTER_METADATA"]) == "SOFTMAX"
        assert back.min_parser_version == "1.5.0"
        assert metadata.read(metadata.write(written, meta, {"labels.txt": b"x\n"})).name == "m"
        assert "min_runtime_version" in flatbuffer.metadata(written)  # the converter's, kept
        pixels = np.random.default_rng(1).integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
        outputs = []
        for c in (content, written):
            interpreter = convert.load_interpreter(c)
            interpreter.allocate_tensors()
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
        np.testing.assert_array_equal(outputs[0], outputs[1])
    with pytest.raises(ValueError, match="not given"):
        metadata.write(content, meta, {})


@pytest.mark.slow  # another export (~15 s); MediaPipe runs this model in test_mediapipe.py
@needs_fmnist
def test_float_input_int8_has_no_half_level_tie(workdir, tmp_path):
    """A float-input int8 model: the metadata's mean is the pixel the input's zero point
    stands for, so (pixel - mean) / std lands on the grid, not between two levels."""
    report = export(workdir, tmp_path, modes="int8", calibration_steps=2, image_input="",
                    io_type="float32", max_eval_examples=50)  # fmt: skip
    content = (tmp_path / "model_int8.tflite").read_bytes()
    scale, zero_point, dtype = convert.inspect(content).input_grid
    (mean,), (std,) = metadata.read(content).inputs[0].normalization
    assert dtype == "int8" and abs(scale * std - 1) < 1e-3 and mean == 128 + zero_point
    levels = (np.arange(256) - mean) / std / scale + zero_point
    assert np.abs(levels - np.round(levels)).max() < 1e-3  # every pixel on a level
    assert report["models"]["int8"]["input_offset_compensated"] != 0
    assert report["models"]["int8"]["check"] == "passed"


@pytest.mark.slow  # quantization-aware fine-tuning (~25 s here)
@needs_fmnist
def test_qat_export(workdir, tmp_path):
    report = export(workdir, tmp_path, modes="qat", calibration_steps=2, qat_epochs=0.125)
    assert sorted(p.name for p in tmp_path.glob("*.tflite")) == ["model_qat_int8.tflite"]
    entry = report["models"]["qat"]
    assert entry["check"] == "passed", entry
    assert entry["decided_examples"] >= classification.MIN_DECIDED, entry
    assert entry["float_ops"] == []
    assert entry["qat"]["steps"] == 16  # 0.125 x 4096 images / batch 32


@pytest.mark.slow
@needs_fmnist
def test_quantization_debugger_ranks_layers_by_error(workdir, tmp_path):
    report = export(workdir, tmp_path, modes="int8", calibration_steps=2, debug_quantization=True)
    errors = [r["rmse_per_scale"] for r in report["quantization_debug"]]
    assert len(errors) == 10 and errors == sorted(errors, reverse=True)
    assert (tmp_path / "quantization_debug.md").exists()
    assert (tmp_path / "quantization_debug.csv").read_text().count("\n") > 30  # every layer


@pytest.mark.slow
@needs_fmnist
def test_every_mode_exports_and_agrees_with_keras(workdir, tmp_path):
    report = export(
        workdir, tmp_path, modes=",".join(convert.MODES), calibration_steps=4, qat_epochs=0.25,
        debug_quantization=True,
    )  # fmt: skip
    files = sorted(p.name for p in tmp_path.glob("*.tflite"))
    assert files == sorted(convert.file_name(m) for m in convert.MODES)
    assert (tmp_path / "labels.txt").read_text().splitlines()[0] == "T-shirt/top"
    saved = json.loads((tmp_path / "export_report.json").read_text())
    assert saved["models"].keys() == report["models"].keys() == set(convert.MODES)
    markdown = (tmp_path / "export_report.md").read_text()
    for mode, entry in report["models"].items():
        assert entry["check"] == "passed", (mode, entry)
        assert entry["eval_examples"] == 200
        assert entry["file"] in markdown
        assert entry["size_bytes"] == (tmp_path / entry["file"]).stat().st_size
        assert entry["keras_top1"] == report["models"]["float32"]["keras_top1"]
        assert entry["mediapipe"] == "ready", (mode, entry["mediapipe"])
    assert report["models"]["float32"]["keras_top1"] > 0.4  # the fixture learned something
    assert report["models"]["qat"]["own_keras"]["agreement"] >= classification.MIN_AGREEMENT["qat"]
    float32 = report["models"]["float32"]
    assert (
        float32["max_abs_error"] <= classification.MAX_FLOAT32_ERROR and float32["agreement"] == 1.0
    )
    for mode in ("int8", "qat"):
        entry = report["models"][mode]
        assert entry["float_ops"] == []
        # the defaults: uint8 camera pixels in, uint8 probabilities out
        assert entry["inputs"][0]["dtype"] == "uint8" and entry["outputs"][0]["dtype"] == "uint8"
        assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD"} <= set(entry["ops"])
        assert entry["size_vs_float32"] < 0.45
    assert report["models"]["float16"]["size_vs_float32"] < 0.6
    assert report["models"]["qat"]["qat"]["steps"] == 32  # 0.25 x 4096 images / batch 32
    # The quantization debugger's table, worst layer first.
    rows = (tmp_path / "quantization_debug.csv").read_text().splitlines()
    assert len(rows) > 30 and "rmse_per_scale" in rows[0]
    errors = [r["rmse_per_scale"] for r in report["quantization_debug"]]
    assert errors == sorted(errors, reverse=True)


@pytest.mark.slow  # ~20 s: raw-pixel float32 and int8 conversions, evaluated
@needs_fmnist
def test_raw_pixel_input_predicts_like_the_float_model(workdir, tmp_path):
    report = export(
        workdir, tmp_path, modes="float32,int8", calibration_steps=4, image_input="uint8",
        io_type="uint8",
    )  # fmt: skip
    for mode in ("float32", "int8"):
        io = report["models"][mode]["inputs"][0]
        assert io["dtype"] == "uint8"
    # The input's quantization is the normalization: pixel p means (p - zp) * 2/255.
    int8 = report["models"]["int8"]
    assert int8["inputs"][0]["scale"] == pytest.approx(2 / 255)
    assert int8["inputs"][0]["zero_point"] in (127, 128)
    assert abs(int8["input_offset_compensated"]) == pytest.approx(1 / 255)
    assert int8["ops"].get("MUL") is None  # no normalization op in the integer graph
    assert report["models"]["int8"]["outputs"][0]["dtype"] == "uint8"
    assert report["models"]["float32"]["agreement"] == 1.0
    assert report["models"]["int8"]["agreement"] >= 0.95
    # Fed by hand: raw pixels in, the float model's classes out.
    run = run_lib.load(str(workdir))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    expected = run.model(pixels.astype(np.float32) / 127.5 - 1.0).numpy()
    interpreter = convert.load_interpreter((tmp_path / "model_float32.tflite").read_bytes())
    interpreter.resize_tensor_input(0, [4, 32, 32, 3])
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def weight_scales_per_tensor(path: pathlib.Path) -> int:
    """The most quantization scales any tensor of the model carries (1: all per tensor)."""
    interpreter = convert.load_interpreter(path.read_bytes())
    return max(
        len(t["quantization_parameters"]["scales"]) for t in interpreter.get_tensor_details()
    )


@pytest.mark.slow  # ~20 s: two int8 conversions and their LiteRT evaluations
@needs_fmnist
def test_per_tensor_int8_is_smaller_and_has_one_scale_per_tensor(workdir, tmp_path):
    """`--per_tensor` through the CLI against the default per-channel int8 of the same run."""
    result = export_cli(
        f"--workdir={workdir}", "--config.export.modes=int8", "--config.export.per_tensor=True",
        "--config.export.calibration_steps=2",
        f"--output_dir={tmp_path / 'pt'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    per_tensor = json.loads((tmp_path / "pt" / "export_report.json").read_text())
    assert per_tensor["options"]["per_tensor"] is True
    entry = per_tensor["models"]["int8"]
    assert entry["weight_scales"] == "per-tensor"
    assert entry["check"] == "passed" and entry["float_ops"] == []
    assert weight_scales_per_tensor(tmp_path / "pt" / "model_int8.tflite") == 1
    assert "model_int8.tflite (per-tensor)" in (tmp_path / "pt" / "export_report.md").read_text()
    # Against the per-channel default converted from the same weights: a 1x1 convolution's
    # weights there carry one scale per output channel.
    images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    per_channel = convert.convert(
        run_lib.load(str(workdir)).model, "int8", DEFAULT_PREPROCESSING,
        outputs=probabilities, representative=lambda: iter([[images]]),
    )  # fmt: skip
    (tmp_path / "pc.tflite").write_bytes(per_channel)
    assert weight_scales_per_tensor(tmp_path / "pc.tflite") >= 8
    assert entry["size_bytes"] < len(per_channel)


def test_weight_scales_rule():
    """Per-tensor applies to int8 PTQ only; what the export report says of each mode."""
    assert convert.weight_scales("int8", per_tensor=False) == "per-channel"
    assert convert.weight_scales("int8", per_tensor=True) == "per-tensor"
    for per_tensor in (False, True):
        assert convert.weight_scales("qat", per_tensor) == "per-channel"
        for mode in ("float32", "float16", "dynamic"):
            assert convert.weight_scales(mode, per_tensor) is None
    converter = tf.lite.TFLiteConverter.from_keras_model(models.mobilenet_v2(alpha=0.35))
    convert.set_weight_scales(converter, "per-channel")
    assert not getattr(converter, "_experimental_disable_per_channel", False)
    convert.set_weight_scales(converter, "per-tensor")
    assert converter._experimental_disable_per_channel is True


# MobileNetV2 0.35's QAT wrapping and training run in the default suite's export test.
@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.35, 1.0])
def test_qat_wraps_mobilenet_v2_as_built(alpha):
    """ReLU6, depthwise, residual Add, dropout: annotated and trained with no error."""
    model = models.build(
        "mobilenet_v2", alpha=alpha, input_shape=(32, 32, 3), num_classes=10,
        remove_early_strides=1,
    )  # fmt: skip
    q = qat.quantize(model)
    wrapped = {layer.layer.__class__.__name__ for layer in q.layers if hasattr(layer, "layer")}
    assert {"Conv2D", "DepthwiseConv2D", "Add", "ReLU", "Dense"} <= wrapped
    q.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    q.fit(x, np.arange(4), epochs=1, verbose=0)


@pytest.mark.parametrize(
    "name,alpha",
    [
        # MobileNetV2 0.35's QAT conversion runs in the default suite's export test.
        pytest.param("mobilenet_v2", 0.35, marks=pytest.mark.slow),
        pytest.param("mobilenet_v2", 1.0, marks=pytest.mark.slow),
        pytest.param("mobilenet_v1", 0.25, marks=pytest.mark.slow),
    ],
)
def test_qat_wraps_our_models_and_converts_to_int8(name, alpha):
    model = models.build(
        name, alpha=alpha, input_shape=(32, 32, 3), num_classes=10, dropout=0.1,
        **({"remove_early_strides": 1} if name == "mobilenet_v2" else {}),
    )  # fmt: skip
    q = qat.quantize(model)
    layer_types = {type(layer).__name__ for layer in q.layers}
    assert "QuantizeWrapperV2" in layer_types
    x = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    q.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    q.fit(x, np.arange(8) % 10, epochs=1, verbose=0)  # fake-quant ranges from data
    content = convert.convert(
        q, "qat", DEFAULT_PREPROCESSING, outputs=probabilities, representative=lambda: iter([[x]])
    )
    info = convert.inspect(content)
    assert info.float_ops == [] and info.inputs[0].dtype == "int8"
    assert "DEPTHWISE_CONV_2D" in info.ops


def test_input_offset_compensation_is_exact_away_from_the_border():
    inputs = tf_keras.Input((12, 12, 3))
    x = tf_keras.layers.Conv2D(6, 3, use_bias=False)(inputs)  # valid: no padding
    x = tf_keras.layers.BatchNormalization()(x)
    model = tf_keras.Model(inputs, tf_keras.layers.ReLU(6.0)(x))
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
    x = rng.uniform(-1, 1, (2, 12, 12, 3)).astype(np.float32)
    offset = 0.5 / 127.5
    compensated = convert.compensate_input_offset(model, offset)
    np.testing.assert_allclose(compensated(x + offset), model(x), atol=1e-5)
    assert not np.allclose(model(x + offset), model(x), atol=1e-3)


def test_float_ops_are_found_and_refused():
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(4, 3)(inputs)
    x = tf_keras.layers.Lambda(tf.math.sin)(x)  # no int8 kernel
    model = tf_keras.Model(inputs, tf_keras.layers.GlobalAveragePooling2D()(x))
    data = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    content = convert.convert(
        model, "int8", DEFAULT_PREPROCESSING, outputs=probabilities,
        representative=lambda: iter([[data]]),
    )  # fmt: skip
    info = convert.inspect(content)
    assert any(op.startswith("SIN#") for op in info.float_ops)
    settings = base_config().export
    settings.image_input = ""  # this model takes normalized int8 images
    with pytest.raises(UserError, match=r"float ops .*SIN.*export.allow_float_ops=True"):
        exporter.check_integer("int8", info, settings)
    exporter.check_integer("dynamic", info, settings)  # float by design
    settings.allow_float_ops = True
    exporter.check_integer("int8", info, settings)


def test_runner_quantizes_inputs_with_the_model_parameters():
    inputs = tf_keras.Input((4, 4, 1))
    model = tf_keras.Model(inputs, tf_keras.layers.Flatten()(inputs * 1.0))
    data = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 4, 4, 1)
    content = convert.convert(
        model, "int8", DEFAULT_PREPROCESSING, outputs=probabilities,
        representative=lambda: iter([[data]]),
    )  # fmt: skip
    runner = evaluate.Runner(content, DEFAULT_PREPROCESSING)
    np.testing.assert_allclose(
        runner(data)["probabilities"], data.reshape(1, 16), atol=2 / 255 + 1e-6
    )
    batch = np.repeat(data, 3, axis=0)
    assert runner(batch)["probabilities"].shape == (3, 16)


def test_runner_feeds_a_fixed_batch_model_in_chunks():
    inputs = tf_keras.Input((4, 4, 1))
    model = tf_keras.Model(inputs, tf_keras.layers.Flatten()(inputs * 2.0))
    content = convert.convert(
        model, "float32", DEFAULT_PREPROCESSING, outputs=probabilities, batch_size=2
    )
    runner = evaluate.Runner(content, DEFAULT_PREPROCESSING)
    assert list(runner.input["shape_signature"]) == [2, 4, 4, 1]
    images = np.random.default_rng(0).uniform(-1, 1, (5, 4, 4, 1)).astype(np.float32)
    np.testing.assert_allclose(
        runner(images)["probabilities"], 2 * images.reshape(5, 16), atol=1e-6
    )


@needs_fmnist
def test_self_check_rejects_a_model_that_disagrees(workdir, tmp_path, monkeypatch):
    original = convert.convert

    def broken(model, mode, *args, **kwargs):
        scrambled = tf_keras.models.clone_model(model)  # fresh random weights
        return original(scrambled, mode, *args, **kwargs)

    monkeypatch.setattr(convert, "convert", broken)
    with pytest.raises(UserError, match=r"self-check failed .*float32: failed: max output error"):
        export(workdir, tmp_path, modes="float32")
    assert not (tmp_path / "model_float32.tflite").exists()
    assert (tmp_path / "model_float32.rejected.tflite").exists()
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["models"]["float32"]["check"].startswith("failed")


def test_agreement_is_checked_on_decided_images_and_near_ties_are_not_held_against_int8():
    labels = np.zeros(40, dtype=np.int64)
    decided = np.tile([[0.8, 0.1, 0.1]], (40, 1)).astype(np.float32)
    tied = np.tile([[0.36, 0.34, 0.30]], (40, 1)).astype(np.float32)
    flipped_ties = tied[:, [1, 0, 2]]  # argmax flips on every near-tie
    task = classification.Classification(base_config(), 3)

    def compared(*pairs):
        comparison = task.comparison()
        for outputs, reference in pairs:
            comparison.add(
                {"label": labels}, {"probabilities": outputs}, {"probabilities": reference}
            )
        return comparison.summary()

    # 40 near-ties, all flipped; 40 decided, all kept.
    summary = compared((flipped_ties, tied), (decided, decided))
    assert summary["agreement"] == 0.5
    assert summary["decided_examples"] == 40 and summary["decided_agreement"] == 1.0
    assert task.check("int8", summary) == "passed"
    check = task.check("int8", compared((decided[:, [1, 0, 2]], decided), (decided, decided)))
    assert exporter.check_failed(check) and "0.500 < 0.9 on the 80 images" in check
    check = task.check("int8", compared((flipped_ties, tied)))  # a barely trained model
    assert check.startswith("unchecked: only 0 of 40") and not exporter.check_failed(check)


@needs_fmnist
def test_export_reads_an_interrupted_run_from_its_checkpoint(workdir, tmp_path):
    partial = tmp_path / "run"
    shutil.copytree(workdir, partial)
    shutil.rmtree(partial / "final")
    shutil.rmtree(partial / "best")
    from_checkpoint = run_lib.load(str(partial))
    assert "checkpoints/ckpt-" in from_checkpoint.weights_from
    final = run_lib.load(str(workdir))
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    # The checkpoint's EMA weights are the ones final/model.h5 holds.
    np.testing.assert_allclose(from_checkpoint.model(x), final.model(x), atol=1e-5)


@needs_fmnist
def test_bad_input_gives_one_line_errors(workdir, tmp_path):
    def refused(path, match, **settings):  # in-process: what export_tflite.py prints, one line
        with pytest.raises(UserError, match=match) as error:
            exporter.export(str(path), settings, output_dir=str(tmp_path / "out"), log=print)
        assert "\n" not in str(error.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(workdir / "config.json", empty / "config.json")
    refused(empty, "holds no checkpoint")

    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["alpha"] = 0.5
    (other / "config.json").write_text(json.dumps(config))
    for weights in ("final", "checkpoint"):
        with pytest.raises(UserError, match=r"does not fit the mobilenet_v2 that config\.json"):
            run_lib.load(str(other), weights)

    nodata = tmp_path / "nodata"
    shutil.copytree(workdir, nodata)
    config = json.loads((nodata / "config.json").read_text())
    config["data"]["data_dir"] = str(tmp_path / "gone")
    (nodata / "config.json").write_text(json.dumps(config))
    refused(nodata, "^calibration data missing", modes="int8")
    refused(
        workdir, "unknown quantization mode int4 in export.modes; choose from float32", modes="int4"
    )
    refused(tmp_path / "nowhere", "does not exist")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(9)) + "\n")
    refused(workdir, r"labels file .* has 9 labels, the model has 10 classes", labels=str(labels))
    refused(
        workdir, r"^export\.mediapipe=True: the int8 model: int8 output, ImageClassifier takes "
        r"float32 or uint8 \(--config\.export\.io_type", io_type="int8", mediapipe=True,
    )  # fmt: skip
    refused(workdir, r"the int8 model would take int8 input", image_input="", io_type="int8",
            mediapipe=True)  # fmt: skip

    # Through export_tflite.py: one line on stderr, exit status 2.
    result = export_cli(f"--workdir={workdir}", "--config.export.qat_epoch=2")
    assert result.returncode == 2
    assert last_line(result.stderr).startswith(
        "error: unknown config field export.qat_epoch (did you mean export.qat_epochs?)"
    )
