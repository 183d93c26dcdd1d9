"""Transfer: what a detector or segmenter takes from a classifier (by layer name, across
stride plans and input sizes), the one-line errors for files that do not fit, the download
cache (a local HTTP server counts the requests), the Colab configs' ImageNet path, and the
named backbones' cache (the second run trains none)."""

import contextlib
import functools
import http.server
import json
import os
import pathlib
import socket
import threading

import numpy as np
import pytest
import tf_keras

from mnv2_tf import backbones, models, tasks
from mnv2_tf import config as config_lib
from mnv2_tf.data import synthetic
from mnv2_tf.errors import UserError
from mnv2_tf.models import weights
from mnv2_tf.pipeline import report
from mnv2_tf.train import trainer
from tests.test_detection_task import TINY_TABLE, tiny_detection_config
from tests.test_train import TINY, needs_fmnist

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = [f"c{i}" for i in range(10)]


def _saved_classifier(path, randomize, **kwargs) -> tf_keras.Model:
    """A classifier with random weights (BN statistics too), saved as a whole model, as a
    classification run's best/model.h5."""
    classifier = models.mobilenet_v2(num_classes=10, **kwargs)
    randomize(classifier)
    classifier.save(str(path))
    return classifier


def _dense_task(config_file: str, **fields):
    config = config_lib.set_fields(
        config_lib.load_file(config_file), {"model.init_from": None, **fields}
    )
    return tasks.get(config, 10, CLASSES)


@pytest.mark.parametrize(
    "config_file,size",
    [("configs/detection_fmnist.py", 96), ("configs/segmentation_fmnist.py", 64)],
)
def test_every_backbone_layer_transfers_by_name_across_stride_plans(
    config_file, size, tmp_path, randomize_weights
):
    """The main job's classifier (32 px, stem stride removed, output stride 8) into a
    detector / segmenter of another size and stride plan (DeepLab's atrous output stride
    16): every backbone layer's weights and BN statistics, the head untouched."""
    path = tmp_path / "classifier.h5"
    classifier = _saved_classifier(
        path, randomize_weights, alpha=0.35, input_shape=(32, 32, 3),
        remove_early_strides=1, output_stride=8, atrous=False,
    )  # fmt: skip
    task = _dense_task(config_file, **{"model.input_size": size})
    model = task.build_model()
    heads = {name: [w.copy() for w in model.get_layer(name).get_weights()]
             for name in task.head_layers}  # fmt: skip
    report = models.load_imagenet_weights(model, str(path), head_layers=task.head_layers)
    backbone = [layer for layer in model.layers if layer.weights and layer.name not in heads]
    assert sorted(report.loaded) == sorted(layer.name for layer in backbone)
    assert len(backbone) > 50 and "block_16_project_BN" in report.loaded
    for layer in backbone:
        for ours, theirs in zip(
            layer.get_weights(), classifier.get_layer(layer.name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(ours, theirs)
    moving = model.get_layer("block_5_expand_BN").moving_variance.numpy()
    np.testing.assert_array_equal(
        moving, classifier.get_layer("block_5_expand_BN").moving_variance.numpy()
    )
    for name, before in heads.items():
        for ours, was in zip(model.get_layer(name).get_weights(), before, strict=True):
            np.testing.assert_array_equal(ours, was)


def test_a_file_that_does_not_fit_is_one_line_naming_the_first_layer(tmp_path, randomize_weights):
    task = _dense_task("configs/segmentation_fmnist.py", **{"model.input_size": 64})
    model = task.build_model()
    before = model.get_layer("Conv1").get_weights()[0].copy()
    wide = tmp_path / "alpha_0.5.h5"
    _saved_classifier(wide, randomize_weights, alpha=0.5, input_shape=(32, 32, 3))
    with pytest.raises(
        UserError,
        match=r"layer block_1_project \(the first that differs\) has shapes .*another width multiplier",
    ):
        models.load_imagenet_weights(model, str(wide), head_layers=task.head_layers)
    v1 = tmp_path / "v1.h5"
    models.mobilenet_v1(alpha=0.25, input_shape=(32, 32, 3), num_classes=10).save(str(v1))
    with pytest.raises(UserError, match=r"backbone layer Conv1 \(the first that differs\) is "
                       r"not in the file, which holds conv1, conv1_bn.*MobileNetV1"):  # fmt: skip
        models.load_imagenet_weights(model, str(v1), head_layers=task.head_layers)
    # Nothing was half-loaded.
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], before)

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(wide.read_bytes()[:20_000])
    not_h5 = tmp_path / "weights.h5"
    not_h5.write_text("<html>the bucket is gone</html>")
    for bad in (truncated, not_h5):
        with pytest.raises(UserError, match=r"cannot read .* as HDF5"):
            models.load_imagenet_weights(model, str(bad), head_layers=task.head_layers)
    cfg = config_lib.base_config().model
    for value, message in [
        (str(tmp_path / "missing.h5"), "missing.h5 not found; pass a .h5 file, a URL"),
        ("backbone:imagenet21k", "no backbone named 'imagenet21k'; known: fmnist"),
        (str(tmp_path), "no best/model.h5 or final/model.h5 in"),
    ]:
        cfg.init_from = value
        with pytest.raises(UserError, match=message):
            trainer.resolve_init(cfg)
    cfg.init_from = "None"  # --config.model.init_from=None on the command line
    assert trainer.resolve_init(cfg) is None


# --- the download cache ----------------------------------------------------------------------


@contextlib.contextmanager
def _http_server(folder: pathlib.Path):
    """A local HTTP server of `folder`; yields (base URL, the list of paths requested)."""
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            if self.path.startswith("/cut/"):  # the connection drops half way
                body = (folder / self.path[5:]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_url_is_downloaded_once_and_a_mirror_serves_when_it_is_gone(tmp_path, randomize_weights):
    served = tmp_path / "bucket"
    served.mkdir()
    keras = tf_keras.applications.MobileNetV2(
        alpha=0.35, input_shape=(96, 96, 3), include_top=False, weights=None
    )
    randomize_weights(keras)
    keras.save_weights(str(served / "mobilenet_test_no_top.h5"))
    cache = tmp_path / "cache"
    with _http_server(served) as (base, requests):
        url = f"{base}/mobilenet_test_no_top.h5"
        first = weights.fetch(url, str(cache))
        assert requests == ["/mobilenet_test_no_top.h5"]
        assert weights.fetch(url, str(cache)) == first  # the second run: no request
        assert len(requests) == 1 and os.listdir(cache) == ["mobilenet_test_no_top.h5"]
        # An interrupted download leaves nothing a later run would take for the weights.
        with pytest.raises(UserError, match=r"arrived incomplete .* run again"):
            weights.fetch(f"{base}/cut/mobilenet_test_no_top.h5", str(tmp_path / "cache2"))
        assert os.listdir(tmp_path / "cache2") == []
    detector = tasks.get(
        tiny_detection_config("", **{"model.blocks": (), "model.input_size": 96}), 10, CLASSES
    )
    model = detector.build_model()
    models.load_imagenet_weights(model, first, head_layers=detector.head_layers)
    np.testing.assert_array_equal(
        model.get_layer("block_16_project").get_weights()[0],
        keras.get_layer("block_16_project").get_weights()[0],
    )

    gone = f"http://127.0.0.1:{_closed_port()}/mobilenet_test_no_top.h5"
    with pytest.raises(UserError, match=r"could not download .*weights_mirror=FOLDER"):
        weights.fetch(gone, str(tmp_path / "cache3"))
    mirrored = weights.fetch(gone, str(tmp_path / "cache3"), mirror=str(served))
    assert pathlib.Path(mirrored).read_bytes() == (served / "mobilenet_test_no_top.h5").read_bytes()
    with pytest.raises(UserError, match=r"weights_mirror: .*not found; put other\.h5"):
        weights.fetch(gone.replace("mobilenet_test_no_top", "other"), str(cache), str(served))


@pytest.mark.parametrize("config_file", ["configs/coco_ssdlite.py", "configs/voc_deeplab.py"])
def test_colab_configs_start_from_imagenet_weights_of_their_alpha(
    config_file, tmp_path, monkeypatch, randomize_weights
):
    """init_from="imagenet" is Keras' no-top file of the config's alpha; offline here, from
    a mirror holding a file written in Keras' layout; a corrupted copy is one line."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = config_lib.load_file(config_file)
    config.model.alpha = 0.5  # the user's width: the file follows it
    url = weights.imagenet_weights_for("mobilenet_v2", 0.5, config.model.input_size)
    assert url.endswith("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    keras = tf_keras.applications.MobileNetV2(
        alpha=0.5, input_shape=(96, 96, 3), include_top=False, weights=None
    )
    randomize_weights(keras)
    name = os.path.basename(url)
    keras.save_weights(str(mirror / name))
    config.model.weights_mirror = str(mirror)

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / name).write_bytes((mirror / name).read_bytes()[:50_000])
    bad = config_lib.set_fields(config, {"model.weights_mirror": str(tmp_path / "bad")})
    with pytest.raises(UserError, match=f"{name} arrived incomplete"):
        trainer.resolve_init(bad.model)

    init = trainer.resolve_init(config.model)
    assert init["url"] == url
    assert init["path"] == str(tmp_path / "home" / ".cache" / "mnv2_tf" / "downloads" / name)
    small = config_lib.set_fields(config, {"model.input_size": 96, "model.num_classes": 5})
    task = tasks.get(small, 5, [f"c{i}" for i in range(5)])
    model = task.build_model()
    trainer._init_from(model, init["path"], task.head_layers)
    np.testing.assert_array_equal(
        model.get_layer("block_12_depthwise").get_weights()[0],
        keras.get_layer("block_12_depthwise").get_weights()[0],
    )


# --- named backbones ---------------------------------------------------------------------------


def _tiny_backbone_config():
    """A tiny stand-in of backbones.fmnist_config (same code path, seconds to train): the
    tiny detector's table, pasted items."""
    config = config_lib.base_config()
    values = {
        **TINY,
        "model.blocks": TINY_TABLE,
        "model.remove_early_strides": 0,
        "model.input_size": 64,
        "data.source": "idx",
        "data.augment": "paste",
        "data.data_dir": "/usr/share/datasets/fashion-mnist",
        "train.strategy": "default",
    }
    return config_lib.set_fields(config, values)


@needs_fmnist
def test_a_named_backbone_is_trained_once_and_reused_by_later_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setitem(backbones.CONFIGS, "tiny", _tiny_backbone_config)
    synthetic.generate(str(tmp_path / "data"), train_images=64, test_images=16, size=80,
                       seed=3, log=lambda *_: None)  # fmt: skip
    levers = {"train.backbone_lr_multiplier": 0.0, "train.freeze_bn": True}
    config = tiny_detection_config(
        str(tmp_path / "data" / "coco"),
        **{"model.init_from": "backbone:tiny", "train.epochs": 1, **levers},
    )
    trainer.train(config, str(tmp_path / "det1"))
    out = capsys.readouterr().out
    assert "backbone tiny: not in" in out and "training it once" in out
    root = tmp_path / "home" / ".cache" / "mnv2_tf" / "backbones"
    (folder,) = os.listdir(root)  # no .partial left
    assert folder == backbones.key("tiny", _tiny_backbone_config())
    saved = json.loads((tmp_path / "det1" / "config.json").read_text())
    assert saved["init"]["from"] == "backbone:tiny"
    assert saved["init"]["backbone"]["workdir"] == str(root / folder)
    assert 0.0 <= saved["init"]["backbone"]["eval_top1"] <= 1.0
    assert saved["init"]["backbone"]["train_wall_time_s"] > 0
    line = report._init_text(saved["init"])  # what the run's report.md says
    assert line.startswith("`backbone:tiny`, a classifier of its own: top-1 ") and "min (`" in line

    # The levers held: at a backbone learning rate of 0 with BN frozen, every backbone
    # weight and statistic of the trained detector is the classifier's; the head trained.
    classifier = tf_keras.models.load_model(root / folder / "best" / "model.h5", compile=False)
    detector = tf_keras.models.load_model(tmp_path / "det1" / "final" / "model.h5",
                                          compile=False)  # fmt: skip
    task = tasks.get(config, 10, CLASSES)
    moved = []
    for layer in detector.layers:
        if not layer.weights:
            continue
        if layer.name in task.head_layers:
            moved.append(layer.name)
            continue
        for ours, theirs in zip(
            layer.get_weights(), classifier.get_layer(layer.name).get_weights(), strict=True
        ):
            np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    assert moved

    # A second run: no backbone is trained again. BN trained this time: the backbone's
    # kernels stay the classifier's (learning rate 0), its BN statistics move.
    def no_training(*_):
        raise AssertionError("the backbone was trained again")

    monkeypatch.setattr(backbones, "_train", no_training)
    trainer.train(config_lib.set_fields(config, {"train.freeze_bn": False}), str(tmp_path / "det2"))
    assert "training it once" not in capsys.readouterr().out
    second = tf_keras.models.load_model(tmp_path / "det2" / "final" / "model.h5", compile=False)
    np.testing.assert_allclose(second.get_layer("block_2_expand").get_weights()[0],
                               classifier.get_layer("block_2_expand").get_weights()[0],
                               rtol=1e-6, atol=1e-7)  # fmt: skip
    assert not np.allclose(second.get_layer("block_2_expand_BN").moving_mean.numpy(),
                           classifier.get_layer("block_2_expand_BN").moving_mean.numpy())  # fmt: skip
    # Another recipe is another backbone: its key differs.
    other = config_lib.set_fields(_tiny_backbone_config(), {"train.epochs": 3})
    assert backbones.key("tiny", other) != folder


def test_backbone_lr_multiplier_needs_sgd(tmp_path):
    levers = {"train.backbone_lr_multiplier": 0.1, "train.freeze_bn": True}
    config = tiny_detection_config("", **{"train.optimizer": "adamw", **levers})
    fine_tuning = config_lib.set_fields(config, {"model.init_from": "imagenet"})
    with pytest.raises(UserError, match=r"backbone_lr_multiplier=0\.1 needs train\.optimizer=sgd"):
        trainer.train(fine_tuning, str(tmp_path / "run"))
    # From scratch the fine-tuning levers do not apply (and say so): nothing to keep.
    neutral = trainer._finetune_levers_only_when_finetuning(config)
    assert neutral.train.backbone_lr_multiplier == 1.0 and neutral.train.freeze_bn is False
    assert trainer._finetune_levers_only_when_finetuning(fine_tuning) is fine_tuning
