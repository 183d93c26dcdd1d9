"""ImageNet with the paper's recipe (Section 6.1), for a TPU or a multi-GPU machine.

    python train.py --config=configs/imagenet.py --workdir=gs://BUCKET/mnv2_imagenet \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets
    python train.py --config=configs/imagenet.py --workdir=/tmp/dry --dry_run   # no data

RMSProp (decay 0.9, momentum 0.9, epsilon 1.0), learning rate 0.045 per 96 images scaled
with the batch, x0.98 per epoch, weight decay 4e-5, label smoothing 0.1, EMA 0.9999,
dropout 0.2, Inception preprocessing, BN momentum 0.997 (slim's). The published
checkpoints trained for about 700k steps of 96 x 8 GPUs; `train.epochs` sets the budget.
TFDS' imagenet2012 needs the archives downloaded by hand (see its catalog page); any
other TFDS classification set works by `--config.data.name`.
"""

from mnv2_tf.config import base_config


def get_config(alpha: str = "1.0"):
    config = base_config()
    config.model.alpha = float(alpha)
    config.model.input_size = 224
    config.model.dropout = 0.2
    config.model.bn_momentum = 0.997

    config.data.source = "tfds"
    config.data.name = "imagenet2012"
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.cache = False  # 140 GB of JPEGs do not fit in memory
    config.data.shuffle_buffer = 10_000
    config.data.augment = "inception"

    config.train.epochs = 300
    config.train.batch_size = 4096
    config.train.optimizer = "rmsprop"
    config.train.learning_rate = 0.045
    config.train.lr_batch_size = 96
    config.train.schedule = "exponential"
    config.train.decay_rate = 0.98
    config.train.decay_epochs = 1.0
    config.train.warmup_epochs = 5.0  # large batches need a ramp; the paper used 96 x 8
    config.train.weight_decay = 4e-5
    config.train.label_smoothing = 0.1
    config.train.ema_decay = 0.9999
    config.train.checkpoint_every_steps = 2000
    config.train.steps_per_loop = 200
    return config
