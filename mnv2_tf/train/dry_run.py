"""`train.py --dry_run`: the whole trainer for a few steps on random data in the config's
format (TFDS sources through `tfds.testing.mock_data`, no download), to check a config
before paying for the real run."""

from __future__ import annotations

import ml_collections

from mnv2_tf.train import trainer

DRY_RUN_STEPS = 3
DRY_RUN_EXAMPLES = 64


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    with config.unlocked():
        config.train.epochs = 1
        config.train.steps_per_epoch = DRY_RUN_STEPS
        config.train.batch_size = min(config.train.batch_size, 16)
        config.data.max_train_examples = DRY_RUN_EXAMPLES
        config.data.max_eval_examples = DRY_RUN_EXAMPLES // 2
        config.data.shuffle_buffer = DRY_RUN_EXAMPLES
        config.train.save_saved_model = False  # the slowest step; a dry run checks the rest
        if config.model.init_from:  # a download (ImageNet weights): not what a dry run checks
            print(f"dry run: model.init_from={config.model.init_from} not loaded", flush=True)
            config.model.init_from = None
    if config.data.source != "tfds":
        return trainer.train(config, workdir)
    import tensorflow_datasets as tfds

    # TFDS' own random examples break on detection sets (TFDS 4.9: sub-features of the
    # `objects` sequence get different lengths): those get examples of their format here.
    as_dataset = _detection_examples if config.task == "detection" else None
    with tfds.testing.mock_data(num_examples=DRY_RUN_EXAMPLES, as_dataset_fn=as_dataset):
        return trainer.train(config, workdir)


def _detection_examples(builder, split, decoders=None, **kwargs):
    """Random JPEGs with 1-3 random boxes, as a TFDS detection builder serves them."""
    import numpy as np
    import tensorflow as tf

    from mnv2_tf.data.detection import TFDS_FIELDS

    del split, decoders, kwargs
    objects_key, flag = TFDS_FIELDS[builder.name.split("/")[0]]
    num_classes = builder.info.features[objects_key]["label"].num_classes
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(DRY_RUN_EXAMPLES):
        n = int(rng.integers(1, 4))
        corner = rng.uniform(0.0, 0.6, (n, 2))
        size = rng.uniform(0.1, 0.4, (n, 2))
        boxes = np.concatenate([corner, corner + size], 1).astype(np.float32)
        pixels = rng.integers(0, 255, (96, 128, 3), np.uint8)
        examples.append({
            "image": tf.io.encode_jpeg(pixels).numpy(),
            objects_key: {"bbox": boxes, "label": rng.integers(0, num_classes, n),
                          flag: np.zeros(n, bool)},
        })  # fmt: skip

    def generate():
        yield from examples

    spec = {
        "image": tf.TensorSpec([], tf.string),
        objects_key: {
            "bbox": tf.TensorSpec([None, 4], tf.float32),
            "label": tf.TensorSpec([None], tf.int64),
            flag: tf.TensorSpec([None], tf.bool),
        },
    }
    return tf.data.Dataset.from_generator(generate, output_signature=spec)
