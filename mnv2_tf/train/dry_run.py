"""`train.py --dry_run`: the whole trainer for a few steps on random data in the config's
format (TFDS sources through `tfds.testing.mock_data`, no download), to check a config
before paying for the real run."""

from __future__ import annotations

import ml_collections

from mnv2_tf import tasks
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

    # A task whose TFDS sets TFDS' own random examples break on serves its own (detection).
    mock = tasks.task_class(config.task).tfds_mock_examples
    as_dataset = None
    if mock:
        # A plain function, not a functools.partial: TFDS binds it to the builder as a method.
        def as_dataset(builder, split, decoders=None, **kwargs):
            return mock(builder, split, decoders, count=DRY_RUN_EXAMPLES, **kwargs)

    with tfds.testing.mock_data(num_examples=DRY_RUN_EXAMPLES, as_dataset_fn=as_dataset):
        return trainer.train(config, workdir)
