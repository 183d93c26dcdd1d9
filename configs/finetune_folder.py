"""Transfer learning onto your own photos: Keras' ImageNet MobileNetV2 weights, a new head.

    python train.py --config=configs/finetune_folder.py --workdir=runs/flowers \
        --config.data.data_dir=/path/to/photos \
        --config.model.init_from=/path/to/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5

The folder holds `train/<class>/*.jpg` and `val/<class>/*.jpg`; unreadable images are
skipped and counted. `init_from` is a local .h5 or its URL (see
`mnv2_tf.models.imagenet_weights_url`), downloaded once where there is a network. The
backbone is frozen for the first epoch while the new head settles, then everything trains
at a low learning rate.
"""

from mnv2_tf.config import base_config


def get_config(alpha: str = "1.0"):
    config = base_config()
    config.model.alpha = float(alpha)
    config.model.input_size = 224
    config.model.dropout = 0.2
    config.model.bn_momentum = 0.99

    config.data.source = "folder"
    config.data.data_dir = "photos"
    config.data.train_split = "train"
    config.data.eval_split = "val"
    config.data.augment = "inception"
    config.data.crop_scale = (0.25, 1.0)  # milder than ImageNet's: few images, a pretrained net

    config.train.epochs = 10
    config.train.batch_size = 32
    config.train.optimizer = "adamw"
    config.train.learning_rate = 1e-3
    config.train.lr_batch_size = 32
    config.train.schedule = "cosine"
    config.train.warmup_epochs = 0.5
    config.train.weight_decay = 1e-4
    config.train.label_smoothing = 0.1
    config.train.ema_decay = 0.999
    config.train.freeze_backbone_epochs = 1
    return config
