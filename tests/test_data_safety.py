"""A user's data is never written to, and one workdir has one writer at a time.

The composites' generator refuses a folder it did not write; a data_dir the user sets is
read as it is whatever data.synthetic says; labels files are read through fileio (buckets
too); the workdir lock stops a second run in one line and takes over one left by a dead
run. The read-only checks of every source through the whole job: the detection and
segmentation fixtures (COCO and VOC composites), test_pipeline.py (IDX, with two
pipeline.py runs at once) and, in the slow suite, `test_every_source_is_read_only_to_the_
pipeline` (image folder, TFDS, VOC boxes, segmentation folder).
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mnv2_tf import fileio
from mnv2_tf.config import base_config
from mnv2_tf.data import detection, sources, synthetic
from mnv2_tf.errors import UserError
from tests.conftest import read_only_tree, tree_digest
from tests.test_train import FASHION_MNIST, TINY, needs_fmnist

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _data_cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = base_config().data
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


@pytest.fixture(scope="module")
def users_coco(tmp_path_factory):
    """A user's own COCO folder (as it would come from a labelling tool: no marker of ours),
    beside other files of theirs."""
    made = tmp_path_factory.mktemp("made")
    synthetic.generate(str(made), train_images=6, test_images=3, size=48, seed=4,
                       log=lambda *_: None)  # fmt: skip
    mine = tmp_path_factory.mktemp("mine")
    shutil.copytree(made / "coco", mine / "coco")
    (mine / "notes.txt").write_text("my labels took days\n")
    return mine


@needs_fmnist
def test_the_generator_refuses_a_folder_it_did_not_write(users_coco, tmp_path):
    before = tree_digest(users_coco)
    with pytest.raises(UserError, match=r"holds files the composites' generator did not write"):
        synthetic.generate(str(users_coco), train_images=2, test_images=1, size=32)
    with pytest.raises(UserError, match=r"data\.synthetic=False"):
        synthetic.ensure(str(users_coco / "coco"))
    assert tree_digest(users_coco) == before
    # The CLI: one line, exit 2, nothing written.
    done = subprocess.run(
        [sys.executable, "-m", "mnv2_tf.data.synthetic", f"--out={users_coco}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {users_coco} holds files")
    assert tree_digest(users_coco) == before
    # Its own folders: empty, or one it wrote (an interrupted one too: written again).
    own = tmp_path / "own"
    synthetic.generate(str(own), train_images=2, test_images=1, size=32, log=lambda *_: None)
    assert (own / "VERSION").read_text() == f"{synthetic.VERSION}\n"
    (own / "VERSION").write_text(f"{synthetic.VERSION} incomplete\n")
    lines = []
    synthetic.ensure(str(own), train_images=2, test_images=1, size=32, log=lines.append)
    assert lines and lines[0].startswith("writing the Fashion-MNIST composites")
    lines.clear()
    synthetic.ensure(str(own), log=lines.append)  # complete: nothing written
    assert lines == []


@needs_fmnist
def test_a_data_dir_the_user_sets_is_read_as_it_is(users_coco, tmp_path, monkeypatch):
    """The dense configs keep data.synthetic=True; with the user's data_dir it means nothing:
    their annotations are read, nothing is generated."""
    before = tree_digest(users_coco)
    cfg = _data_cfg(source="coco", synthetic=True, data_dir=str(users_coco / "coco"))
    assert synthetic.resolve(cfg) is cfg
    source = detection.load(cfg, "train")
    assert source.num_examples == 6
    assert tree_digest(users_coco) == before
    # Unset: the offline default, under the cache (here a fresh home: written once).
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(
        synthetic, "generate", lambda out, **_: pathlib.Path(out).mkdir(parents=True)
    )
    resolved = synthetic.resolve(_data_cfg(source="voc", synthetic=True), log=lambda *_: None)
    assert resolved.data_dir == os.path.join(
        os.path.expanduser(synthetic.DEFAULT_DIR), "voc"
    ) and resolved.data_dir.startswith(str(tmp_path))
    with pytest.raises(UserError, match=r"data\.synthetic=True writes the coco and voc layouts"):
        synthetic.resolve(_data_cfg(source="folder", synthetic=True))


def test_labels_files_are_read_through_fileio():
    """A labels file in a bucket (here TensorFlow's in-memory file system, which os.path
    cannot see) is read like a local one, by the one reader the data and the export use."""
    folder = "ram://labels_test"
    tf.io.gfile.makedirs(folder)
    path = f"{folder}/labels.txt"
    fileio.write_text_atomic(path, " cat \ndog\n\n\n")
    assert not os.path.exists(path) and sources.read_labels(path) == ["cat", "dog"]
    assert sources.read_labels(path, 2) == ["cat", "dog"]
    assert sources.read_labels(f"{folder}/none.txt") is None
    with pytest.raises(UserError, match=r"has 2 labels, the model has 3 classes"):
        sources.read_labels(path, 3)
    fileio.write_text_atomic(path, "cat\n\ndog\n")
    with pytest.raises(UserError, match=r"line 2 is blank; give one label per line"):
        sources.read_labels(path)
    # The VOC reader's labels.txt, on that path.
    fileio.write_text_atomic(path, "cat\ndog\n")
    assert detection.voc_class_names(folder) == ["cat", "dog"]


def _copy_to(folder: pathlib.Path, target: str) -> None:
    for path in sorted(folder.rglob("*")):
        out = f"{target}/{path.relative_to(folder).as_posix()}"
        if path.is_dir():
            tf.io.gfile.makedirs(out)
        else:
            fileio.write_bytes_atomic(out, path.read_bytes())


@needs_fmnist
def test_the_folder_readers_read_through_fileio(tmp_path):
    """VOC boxes, VOC masks, a masks folder and a classification image folder, read from a
    file system os.path cannot see (TensorFlow's in-memory one, as a bucket would be)."""
    from mnv2_tf.data import segmentation

    synthetic.generate(str(tmp_path / "c"), train_images=4, test_images=2, size=48, seed=6,
                       log=lambda *_: None)  # fmt: skip
    _copy_to(tmp_path / "c" / "voc", "ram://readers/voc")
    boxes = detection.load(_data_cfg(source="voc", data_dir="ram://readers/voc"), "train")
    assert boxes.num_examples == 4 and boxes.class_names == list(sources.FASHION_MNIST_CLASSES)
    masks = segmentation.load(_data_cfg(source="voc", data_dir="ram://readers/voc"), "test")
    assert masks.num_examples == 2 and masks.class_names[0] == "background"
    folder = tmp_path / "m"
    _segmentation_folder(tmp_path / "c" / "voc", folder)
    _copy_to(folder, "ram://readers/masks")
    cfg = _data_cfg(source="folder", data_dir="ram://readers/masks", eval_split="test")
    assert segmentation.load(cfg, "train").num_examples == 4
    _fmnist_images(tmp_path / "f", "train", 12)
    _copy_to(tmp_path / "f", "ram://readers/photos")
    photos = sources.load(_data_cfg(source="folder", data_dir="ram://readers/photos"), "train")
    assert photos.num_examples == 12 and len(next(iter(photos.dataset))["image"].numpy()) > 0


# --- one writer per workdir -----------------------------------------------------------------


def _lock(workdir: pathlib.Path, **holder):
    entry = {"what": "pipeline.py", "host": socket.gethostname(), "pid": os.getpid(),
             "token": "other", "started": time.time(), "beat": time.time(), **holder}  # fmt: skip
    (workdir / fileio.LOCK_NAME).write_text(json.dumps(entry))


def test_a_held_workdir_stops_a_second_writer_in_one_line(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _lock(tmp_path, pid=sleeper.pid)
        with pytest.raises(UserError) as caught, fileio.workdir_lock(str(tmp_path), "export"):
            pass
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"workdir {tmp_path} is in use by pipeline.py (pid {sleeper.pid}")
        assert message.endswith(f"(if that run is gone, delete {tmp_path / fileio.LOCK_NAME})")
        # Another machine's run with a recent heartbeat holds it too.
        _lock(tmp_path, host="colab-runtime-2", pid=1)
        with (
            pytest.raises(UserError, match="on colab-runtime-2"),
            fileio.workdir_lock(str(tmp_path), "export"),
        ):
            pass
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_left_by_a_dead_run_is_taken_over_and_released(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    for holder in ({"pid": dead.pid}, {"host": "elsewhere", "beat": time.time() - 3600}):
        _lock(tmp_path, **holder)
        with fileio.workdir_lock(str(tmp_path), "export"):
            held = json.loads((tmp_path / fileio.LOCK_NAME).read_text())
            assert held["pid"] == os.getpid() and held["what"] == "export"
            with fileio.workdir_lock(str(tmp_path), "the report"):  # re-entrant
                pass
            assert (tmp_path / fileio.LOCK_NAME).exists()
        assert not (tmp_path / fileio.LOCK_NAME).exists()


# --- every source, read-only through the whole job (slow) ------------------------------------


def _fmnist_images(folder: pathlib.Path, split: str, count: int) -> None:
    prefix = sources.IDX_PREFIXES[split]
    images = sources.read_idx(sources.idx_file(FASHION_MNIST, prefix, "images"))[:count]
    labels = sources.read_idx(sources.idx_file(FASHION_MNIST, prefix, "labels"))[:count]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        out = folder / split / sources.FASHION_MNIST_CLASSES[label].replace("/", "_")
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert("RGB").save(out / f"{i:04d}.png")


def _tfds_local(data_dir: pathlib.Path) -> None:
    """A real prepared TFDS dataset on disk (as `download_and_prepare` leaves one), made from
    Fashion-MNIST's IDX files with TFDS' own writer."""
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(28, 28, 1)),
        "label": tfds.features.ClassLabel(names=list(sources.FASHION_MNIST_CLASSES)),
    })  # fmt: skip
    splits = {}
    for split, count in (("train", 512), ("test", 128)):
        prefix = sources.IDX_PREFIXES[split]
        images = sources.read_idx(sources.idx_file(FASHION_MNIST, prefix, "images"))[:count]
        labels = sources.read_idx(sources.idx_file(FASHION_MNIST, prefix, "labels"))[:count]
        splits[split] = tf.data.Dataset.from_tensor_slices(
            {"image": images[..., None], "label": labels.astype(np.int64)}
        )
    tfds.dataset_builders.store_as_tfds_dataset(
        name="fmnist_local", version="1.0.0", features=features, split_datasets=splits,
        data_dir=str(data_dir),
    )  # fmt: skip


def _segmentation_folder(voc: pathlib.Path, out: pathlib.Path) -> None:
    """The composites' VOC masks as a plain images/ + masks/ folder."""
    for split in ("train", "test"):
        (out / split / "images").mkdir(parents=True)
        (out / split / "masks").mkdir(parents=True)
        for name in (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split():
            shutil.copy(voc / "JPEGImages" / f"{name}.jpg", out / split / "images")
            shutil.copy(voc / "SegmentationClass" / f"{name}.png", out / split / "masks")
    # A folder's labels.txt lists every class id, background (0) included.
    (out / "labels.txt").write_text("background\n" + (voc / "labels.txt").read_text())


DENSE = {"model.input_size": 64, "model.blocks": ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2),
         (6, 64, 2, 2)), "train.batch_size": 16, "train.epochs": 1, "train.steps_per_loop": 2,
         "train.precise_bn_images": 32, "train.save_saved_model": False,
         "data.max_train_examples": 10**6, "data.max_eval_examples": 10**6,
         "export.calibration_steps": 1, "export.eval_batch_size": 8}  # fmt: skip
SOURCES = {
    # name: (config, data folder under the test's data/, overrides)
    "folder": ("configs/fashion_mnist.py", "folder", {**TINY, "data.source": "folder"}),
    "tfds": ("configs/fashion_mnist.py", "tfds",
             {**TINY, "data.source": "tfds", "data.name": "fmnist_local"}),
    "coco": ("configs/detection_fmnist.py:quick", "composites/coco", DENSE),
    "voc_boxes": ("configs/detection_fmnist.py:quick", "composites/voc",
                  {**DENSE, "data.source": "voc"}),
    "voc_masks": ("configs/segmentation_fmnist.py:quick", "composites/voc", DENSE),
    "mask_folder": ("configs/segmentation_fmnist.py:quick", "mask_folder",
                    {**DENSE, "data.source": "folder"}),
}  # fmt: skip


@pytest.mark.slow
@needs_fmnist
@pytest.mark.parametrize("name", list(SOURCES))
def test_every_source_is_read_only_to_the_pipeline(name, tmp_path):
    """pipeline.py (train, export with LiteRT evaluation, benchmark, examples, report) on a
    copy of each source made immutable, its tree checksummed before and after. The dense
    configs keep data.synthetic=True: a data_dir that is set is read, never written."""
    config, folder, overrides = SOURCES[name]
    data = tmp_path / "data"
    if folder == "folder":
        for split, count in (("train", 256), ("test", 100)):
            _fmnist_images(data / "folder", split, count)
    elif folder == "tfds":
        _tfds_local(data / "tfds")
    else:
        synthetic.generate(str(data / "composites"), train_images=32, test_images=8, size=64,
                           seed=2, log=lambda *_: None)  # fmt: skip
        if folder == "mask_folder":
            _segmentation_folder(data / "composites" / "voc", data / "mask_folder")
    values = {**overrides, "data.data_dir": str(data / folder), "export.modes": "float32,int8",
              "bench.threads": "1", "bench.num_runs": 3, "bench.warmup_runs": 1}  # fmt: skip
    cmd = [sys.executable, "pipeline.py", f"--config={config}", f"--workdir={tmp_path / 'run'}",
           *(f"--config.{k}={v}" for k, v in values.items())]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path / "home")}  # no cache to fall back on
    with read_only_tree(data) as immutable:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                              env=env, check=False)  # fmt: skip
    assert immutable
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "report.md").exists()
    assert not (tmp_path / "home" / ".cache").exists() or not any(
        p.name.startswith("fmnist_composites") for p in (tmp_path / "home" / ".cache").rglob("*")
    )
