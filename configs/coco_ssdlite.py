"""MobileNetV2 + SSDLite on COCO with the paper's recipe (Section 6.2, Table 6), for a TPU or
a multi-GPU machine; the TF Object Detection API's `ssdlite_mobilenet_v2_coco` config.

    python train.py --config=configs/coco_ssdlite.py --workdir=gs://BUCKET/ssdlite \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets
    python train.py --config=configs/coco_ssdlite.py --workdir=/tmp/dry --dry_run   # no data
    python train.py --config=configs/coco_ssdlite.py:voc --workdir=...   # Pascal VOC 2007

320 x 320 input (Table 6's resolution), alpha 1.0, ImageNet-initialized backbone (Keras'
weights, downloaded once), SSD's augmentation, 3:1 hard-negative mining over a softmax with
a background class (COCO's 80 classes + background: the 81 outputs with which our profiler
reproduces Table 6's 4.3M parameters and 0.8B multiply-adds), RMSProp (decay 0.9, momentum
0.9, epsilon 1.0) at 0.004 per 24 images, x0.95 every 800,720 steps of 24 (162 epochs),
BN momentum 0.9997, weight decay 4e-5, EMA. The API trained 200k steps of 24 images, 41
epochs of COCO's 118k training images: `train.epochs`. The paper reports 22.1 mAP on COCO
test-dev.
"""

from mnv2_tf.config import base_config


def get_config(variant: str = ""):
    config = base_config()
    config.task = "detection"
    config.model.name = "mobilenet_v2"
    config.model.alpha = 1.0
    config.model.input_size = 320
    config.model.crop_fraction = 1.0
    config.model.bn_momentum = 0.9997
    config.model.init_from = "imagenet"  # Keras' no-top file of model.alpha, downloaded once

    config.data.source = "tfds"
    config.data.name = "coco/2017"
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.cache = False
    config.data.shuffle_buffer = 10_000

    config.detection.head = "ssdlite"
    config.detection.loss = "softmax"

    config.train.epochs = 41
    config.train.batch_size = 256
    config.train.optimizer = "rmsprop"
    config.train.learning_rate = 0.004
    config.train.lr_batch_size = 24
    config.train.schedule = "exponential"
    config.train.decay_rate = 0.95
    config.train.decay_epochs = 800_720 * 24 / 118_287  # the API's 800,720 steps of 24
    config.train.warmup_epochs = 1.0
    config.train.weight_decay = 4e-5
    config.train.ema_decay = 0.9999
    config.train.checkpoint_every_steps = 2000
    config.train.steps_per_loop = 100
    config.export.eval_batch_size = 100
    if variant == "voc":
        config.data.name = "voc/2007"
        config.data.train_split = "train+validation"
        config.data.eval_split = "test"
        config.train.epochs = 200
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of coco_ssdlite.py; use '' or 'voc'")
    return config
