"""Mobile DeepLabv3 on Fashion-MNIST composites, offline, on a CPU: the segmentation default.

    python pipeline.py --config=configs/segmentation_fmnist.py --workdir=runs/seg
    python pipeline.py --config=configs/segmentation_fmnist.py:quick --workdir=runs/seg_quick

The first run writes the composites (`python -m mnv2_tf.data.synthetic`: 12,000 training
and 1,000 test canvases of 192 px, 1-4 items each) under ~/.cache/mnv2_tf, then reads their
VOC layout (JPEGImages/, SegmentationClass/ palette PNGs with a 255 boundary band,
ImageSets/Segmentation/) as a user's own VOC folder: 11 classes, background + the 10 items. Your own data instead:
`--config.data.data_dir=/path/to/VOC2012` (or data.source=folder): a data_dir you set is
read as it is and never written to; data.synthetic only means "the composites while
data.data_dir is unset".
MobileNetV2 0.35 at 128 px + the paper's mobile head (1x1 branch + image pooling, no ASPP) at
output stride 16, DeepLab's scale/crop/flip augmentation, SGD with warm-up and cosine decay.
The backbone starts from the named classifier `backbone:fmnist` (the detector's: one
backbone serves both; mnv2_tf/backbones.py), as the paper starts from ImageNet; alpha 0.35 is
its width (from scratch, alpha 0.5 was the default: results/segmentation_levers.json);
`--config.model.init_from=None` trains from scratch, `:quick` does (minutes from a clean
cache). Results: benchmarks/results/segmentation_fmnist.json.
"""

from mnv2_tf.config import base_config


def get_config(variant: str = ""):
    config = base_config()
    config.task = "segmentation"
    config.model.alpha = 0.35  # the width of the named backbone (one serves both tasks)
    config.model.input_size = 128
    config.model.output_stride = 16
    config.model.crop_fraction = 1.0  # segmentation sees the whole image
    # The paper's way: from a classifier (from scratch: --config.model.init_from=None).
    config.model.init_from = "backbone:fmnist"

    config.data.source = "voc"
    config.data.synthetic = True  # the offline default, used while data.data_dir is unset
    config.data.eval_split = "test"
    config.data.shuffle_buffer = 12_000

    config.segmentation.min_scale = 0.5
    config.segmentation.max_scale = 2.0

    config.train.epochs = 10
    config.train.batch_size = 32
    config.train.optimizer = "sgd"
    config.train.learning_rate = 0.05
    config.train.lr_batch_size = 32
    config.train.schedule = "cosine"
    config.train.warmup_epochs = 0.5
    config.train.weight_decay = 4e-5
    config.train.label_smoothing = 0.0
    config.train.ema_decay = 0.999
    config.train.precise_bn_images = 512

    config.export.calibration_steps = 8
    config.export.qat_epochs = 0.5
    config.export.qat_learning_rate = 2e-3
    config.export.eval_batch_size = 50
    if variant == "quick":
        config.model.init_from = None  # from scratch: minutes from a clean cache
        config.train.epochs = 2
        config.data.max_train_examples = 1000
        config.data.max_eval_examples = 100
        config.model.bn_momentum = 0.9
        config.train.ema_decay = 0.99
        config.export.qat_epochs = 0.1
    elif variant:
        raise ValueError(
            f"unknown variant {variant!r} of segmentation_fmnist.py; use '' or 'quick'"
        )
    return config
