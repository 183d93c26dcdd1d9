"""Every experiment config loads, has the fields the tools rely on, and round-trips."""

import json
import pathlib

import ml_collections
import pytest

from mnv2_tf.config import load_file as _load_config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("*.py"))
REQUIRED = (
    "model.alpha",
    "model.input_size",
    "train.epochs",
    "train.batch_size",
    "data.max_train_examples",
    "data.data_dir",
)


@pytest.mark.parametrize("path", CONFIGS)
def test_config_has_the_common_fields_and_round_trips(path):
    config = _load_config_file(str(ROOT / path))
    for field in REQUIRED:
        section, name = field.split(".")
        assert name in config[section], f"{path} lacks {field}"
    as_json = json.loads(json.dumps(config.to_dict()))
    assert ml_collections.ConfigDict(as_json).to_dict() == as_json


def test_configs_are_the_expected_eight():
    assert CONFIGS == [
        "configs/backbone_fmnist.py",
        "configs/coco_ssdlite.py",
        "configs/detection_fmnist.py",
        "configs/fashion_mnist.py",
        "configs/finetune_folder.py",
        "configs/imagenet.py",
        "configs/segmentation_fmnist.py",
        "configs/voc_deeplab.py",
    ]


def test_quick_variant_and_unknown_variant():
    quick = _load_config_file(str(ROOT / "configs/fashion_mnist.py") + ":quick")
    assert quick.data.max_train_examples == 6000 and quick.train.epochs == 2
    with pytest.raises(ValueError, match="unknown variant"):
        _load_config_file(str(ROOT / "configs/fashion_mnist.py") + ":slow")


def test_imagenet_dry_run_on_mock_data(tmp_path):
    from mnv2_tf.train import dry_run

    config = _load_config_file(str(ROOT / "configs/imagenet.py") + ":0.35")
    config.model.input_size = 64
    config.model.blocks = ((1, 16, 1, 1), (6, 24, 2, 2))  # a tiny table: the run is checked
    dry_run.run(config, str(tmp_path))  # what train.py --dry_run calls
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["step"] for m in metrics] == [3]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["num_classes"] == 1000 and config["data"]["name"] == "imagenet2012"
    assert (tmp_path / "final" / "model.h5").exists()


@pytest.mark.slow  # ~25 s: a 128 px SSDLite through the trainer on mocked COCO
def test_coco_ssdlite_dry_run_on_mock_data(tmp_path):
    """The paper's COCO recipe, checked without data or downloads (what `train.py
    --dry_run` does): mocked coco/2017 examples, a few steps and an mAP."""
    from mnv2_tf.train import dry_run

    config = _load_config_file(str(ROOT / "configs/coco_ssdlite.py"))
    config.model.input_size = 128
    config.model.blocks = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2))  # tiny
    dry_run.run(config, str(tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["step"] for m in metrics] == [3] and "eval_map" in metrics[0]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["num_classes"] == 80 and saved["detection"]["loss"] == "softmax"
    assert saved["model"]["init_from"] is None  # the ImageNet download is skipped
    assert (tmp_path / "final" / "model.h5").exists()
