"""Mobile DeepLabv3 on PASCAL VOC 2012 with DeepLab's recipe (paper Section 6.3, Table 7),
for a GPU/TPU machine, reading a VOCdevkit folder from Drive or GCS.

    python train.py --config=configs/voc_deeplab.py --workdir=gs://BUCKET/deeplab \
        --config.data.data_dir=gs://BUCKET/VOCdevkit/VOC2012
    python train.py --config=configs/voc_deeplab.py --workdir=/tmp/dry --dry_run \
        --config.data.data_dir=/path/to/a/small/VOC2012-layout/folder
    python train.py --config=configs/voc_deeplab.py:aspp ...   # Table 7's ASPP row

MobileNetV2 1.0 initialized from Keras' ImageNet weights (downloaded once), output stride
16, the mobile head (1x1 conv + image pooling, no ASPP: 2.11M parameters, 2.75B MAdds at
513x513), 513x513 crops of images scaled 0.5-2.0 and flipped, SGD with momentum 0.9 at 0.007
per 16 images, polynomial decay (power 0.9), weight decay 4e-5, BN momentum 0.9997: DeepLab's
`train.py` flags for `mobilenet_v2` on VOC. DeepLab trains 30,000 steps of 16 on `train_aug`
(10,582 images: VOC 2012 train + SBD's masks, listed in ImageSets/Segmentation/train_aug.txt
when you add them): 45 epochs; on VOC's own 1,464 `train` images set more epochs. 21 classes
(background + VOC's 20). The paper reports 75.32 mIOU on val.
"""

from mnv2_tf.config import base_config


def get_config(variant: str = ""):
    config = base_config()
    config.task = "segmentation"
    config.model.name = "mobilenet_v2"
    config.model.alpha = 1.0
    config.model.input_size = 513
    config.model.output_stride = 16
    config.model.crop_fraction = 1.0
    config.model.bn_momentum = 0.9997
    config.model.init_from = "imagenet"  # Keras' no-top file of model.alpha, downloaded once

    config.data.source = "voc"
    config.data.data_dir = "/content/drive/MyDrive/VOCdevkit/VOC2012"
    config.data.train_split = "train_aug"
    config.data.eval_split = "val"
    config.data.cache = False
    config.data.shuffle_buffer = 2_000

    config.segmentation.aspp = False
    config.segmentation.min_scale = 0.5
    config.segmentation.max_scale = 2.0

    config.train.epochs = 45
    config.train.batch_size = 16
    config.train.optimizer = "sgd"
    config.train.learning_rate = 0.007
    config.train.lr_batch_size = 16
    config.train.schedule = "poly"
    config.train.warmup_epochs = 0.0
    config.train.momentum = 0.9
    config.train.weight_decay = 4e-5
    config.train.label_smoothing = 0.0
    config.train.ema_decay = 0.0
    config.train.checkpoint_every_steps = 2000
    config.train.steps_per_loop = 50
    config.export.eval_batch_size = 8
    if variant == "aspp":
        config.segmentation.aspp = True
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of voc_deeplab.py; use '' or 'aspp'")
    return config
