"""The fields every experiment config has, with their defaults, for every stage.

Config files under `configs/` start from `base_config()` and change what their experiment
needs; the entry points lock the result, so a misspelt `--config.FIELD=VALUE` fails.
Sections: `task` (which task module: classification, the default), `model`, `data`,
`train`, `export` (the TFLite conversion and its self-check) and `bench` (latency runs).
Each default lives here once; training saves the resolved config as the run's
`config.json`, which export and the pipeline read back (`load_saved`).
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from mnv2_tf import fileio, models
from mnv2_tf.errors import UserError
from mnv2_tf.models.common import Preprocessing

# Model fields that change the architecture: a checkpoint only fits a model that agrees on them.
ARCHITECTURE_FIELDS = (
    "name",
    "alpha",
    "input_size",
    "num_classes",
    "expansion",
    "linear_bottleneck",
    "shortcut",
    "output_stride",
    "remove_early_strides",
    "atrous",
    "blocks",
)


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "classification"  # a key of mnv2_tf.tasks.TASKS

    config.model = ml_collections.ConfigDict()
    config.model.name = "mobilenet_v2"  # or "mobilenet_v1"
    config.model.alpha = 1.0
    config.model.input_size = 224
    config.model.num_classes = config_dict.placeholder(int)  # None: from the dataset
    config.model.dropout = 0.2
    # Keras' 0.999 suits ImageNet-length runs; on small datasets the moving averages lag
    # the weights for thousands of steps and evaluation sits at chance. 0.99 does not.
    config.model.bn_momentum = 0.99
    config.model.bn_epsilon = 1e-3
    config.model.expansion = config_dict.placeholder(float)
    config.model.linear_bottleneck = True
    config.model.shortcut = "bottleneck"
    config.model.output_stride = config_dict.placeholder(int)
    config.model.remove_early_strides = 0
    # Past output_stride: dilate (True, DeepLab) or plainly drop the strides (False).
    config.model.atrous = True
    # MobileNetV2's rows (t, c, n, s) of Table 2; empty: the paper's. A tiny table serves the
    # tests of the training machinery: --config.model.blocks="((1,16,1,1),(6,24,2,2))".
    config.model.blocks = ()
    config.model.crop_fraction = Preprocessing.crop_fraction
    # Where training starts (mnv2_tf/models/weights.py says what transfers): a Keras .h5
    # (ImageNet's, a path or a URL: downloaded once into ~/.cache/mnv2_tf/downloads),
    # another run's workdir, or a named backbone "backbone:fmnist" (mnv2_tf/backbones.py:
    # trained once into ~/.cache/mnv2_tf/backbones). The head starts new unless the file
    # holds it in the same shapes.
    config.model.init_from = config_dict.placeholder(str)
    # A folder (local or gs://) holding weight files under their URL's names, looked in
    # before the network: for a bucket that has vanished, or a machine without one.
    config.model.weights_mirror = config_dict.placeholder(str)

    config.data = ml_collections.ConfigDict()
    # Classification: "idx" | "folder" | "tfds"; detection: "coco" | "voc" | "tfds";
    # segmentation: "voc" | "folder" | "tfds".
    config.data.source = "idx"
    config.data.name = config_dict.placeholder(str)  # TFDS name
    config.data.data_dir = config_dict.placeholder(
        str
    )  # IDX folder, image-folder root, TFDS data_dir
    config.data.download = False  # TFDS: download_and_prepare (needs a network)
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.max_train_examples = config_dict.placeholder(int)  # None: all
    config.data.max_eval_examples = config_dict.placeholder(int)
    config.data.cache = True  # keep the (encoded) source in memory after the first epoch
    config.data.shuffle_buffer = 50_000
    # "inception" | "small" | "paste" (gray items over random scenes) | "auto" (small for <= 64 px)
    config.data.augment = "auto"
    config.data.crop_scale = (0.08, 1.0)
    config.data.small_pad = 4
    config.data.random_erasing = 0.0
    config.data.class_names = ()
    config.data.deterministic = False  # True: a reproducible element order (slower map)
    # Detection, segmentation: with data_dir unset, read the offline Fashion-MNIST composites
    # (coco/ or voc/ of ~/.cache/mnv2_tf/fmnist_composites_v*, written there once). A data_dir
    # that is set is read as it is, never written to (mnv2_tf.data.synthetic.resolve).
    config.data.synthetic = False

    # SSD / SSDLite (config.task = "detection"); see mnv2_tf/models/ssdlite.py.
    config.detection = ml_collections.ConfigDict()
    config.detection.head = "ssdlite"  # "ssdlite" (depthwise-separable) | "ssd" (regular 3x3)
    config.detection.loss = "focal"  # "focal" (sigmoid) | "softmax" (3:1 hard negatives)
    config.detection.min_depth = 16  # of the extra feature layers
    # focal: every class score starts at this probability (the class logits' bias, as
    # RetinaNet), so the many background anchors do not swamp the first steps; 0: no prior.
    config.detection.class_prior = 0.01
    config.detection.min_scale = 0.2  # anchor scales of the first and last feature map
    config.detection.max_scale = 0.95
    # 3 anchors per position on the first map (0.1 square, min_scale at 2:1 and 1:2, as SSD)
    # or the other maps' 6 (with min_scale square and the interpolated scale).
    config.detection.reduce_boxes_in_lowest_layer = True
    config.detection.match_threshold = 0.5  # IoU at which an anchor takes a box
    config.detection.max_boxes = 100  # boxes per image kept from the labels
    config.detection.max_detections = 100  # the post-process op's output rows
    config.detection.score_threshold = 1e-8
    config.detection.iou_threshold = 0.6  # NMS

    # Mobile DeepLabv3 (config.task = "segmentation"); see mnv2_tf/models/deeplab.py. The
    # output stride is model.output_stride (16 when unset).
    config.segmentation = ml_collections.ConfigDict()
    config.segmentation.aspp = False  # the paper's mobile candidate: 1x1 + image pooling only
    config.segmentation.atrous_rates = ()  # ASPP's; empty: 6, 12, 18 at output stride 16
    config.segmentation.depth = 256  # channels of the head's branches
    config.segmentation.dropout = 0.1
    config.segmentation.min_scale = 0.5  # training's random scale of image and mask
    config.segmentation.max_scale = 2.0
    # How the exported category mask reaches the input size: "logits" (upsample every
    # class's logit, then argmax), "scores_bilinear" (upsample to 1/mask_stride, argmax,
    # nearest) or "argmax_nearest" (argmax on the feature map, nearest).
    config.segmentation.mask_upsampling = "scores_bilinear"
    config.segmentation.mask_stride = 4

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 10
    config.train.batch_size = 128  # global
    config.train.optimizer = "rmsprop"  # "rmsprop" (paper) | "sgd" | "adamw"
    # The learning rate for `lr_batch_size` images, scaled linearly to batch_size
    # (the paper: 0.045 per 96).
    config.train.learning_rate = 0.045
    config.train.lr_batch_size = 96
    config.train.schedule = "exponential"  # "exponential" (paper: x0.98 per epoch) | "cosine"
    config.train.decay_rate = 0.98
    config.train.decay_epochs = 1.0
    config.train.warmup_epochs = 0.0
    config.train.momentum = 0.9
    config.train.rmsprop_rho = 0.9
    config.train.rmsprop_epsilon = 1.0
    config.train.weight_decay = 4e-5  # L2 on conv/dense kernels, not depthwise (paper)
    config.train.label_smoothing = 0.1
    config.train.ema_decay = 0.9999  # 0 disables; eval and export use the EMA weights
    # Fine-tuning from model.init_from: train only the head for the first epochs; then the
    # backbone at this multiple of the learning rate (SGD only: adaptive optimizers undo a
    # gradient's scale); freeze_bn keeps the backbone's BatchNorm layers as pretrained
    # (statistics and scale/offset: inference mode, as detectors trained on small batches).
    config.train.freeze_backbone_epochs = 0
    config.train.backbone_lr_multiplier = 1.0
    config.train.freeze_bn = False
    config.train.checkpoint_every_steps = 0  # 0: at the end of each epoch only
    config.train.keep_checkpoints = 3
    config.train.steps_per_loop = 50  # steps per tf.function call (fewer Python round trips)
    config.train.steps_per_epoch = config_dict.placeholder(int)  # None: one pass over the data
    config.train.seed = 0
    config.train.strategy = "auto"  # "auto" | "default" | "mirrored" | "multi_worker" | "tpu"
    config.train.mixed_precision = "auto"  # "auto" | "none" | "mixed_float16" | "mixed_bfloat16"
    config.train.save_saved_model = True  # final/ and best/ saved_model/ besides model.h5
    config.train.logical_cpu_devices = 0  # >1 splits the CPU into devices (tests, dry runs)
    # Before each evaluation and the saved models, BatchNorm's moving statistics are
    # re-estimated for the evaluated (EMA) weights on this many training images, with the
    # eval preprocessing ("precise BN", Wu & Johnson 2021): a short run's moving averages
    # still hold much of their initial values and would evaluate near chance. 0 disables.
    config.train.precise_bn_images = 512

    config.export = ml_collections.ConfigDict()
    config.export.modes = "float32,int8,qat"  # comma-separated: float32,float16,dynamic,int8,qat
    config.export.calibration_steps = 16  # batches of 32 training images for int8 ranges
    # The defaults make the files an app loads unchanged (MediaPipe Tasks, the TFLite Task
    # Library): camera pixels in (uint8, normalization in the graph or in the input's
    # quantization), uint8 or float32 out.
    config.export.io_type = "uint8"  # integer models' input/output: int8 | uint8 | float32
    config.export.image_input = "uint8"  # "uint8": raw RGB pixels in; "": normalized floats
    config.export.per_tensor = False  # int8 PTQ: one weight scale per tensor, not per channel
    config.export.allow_float_ops = False  # keep an integer model that still has float ops
    config.export.qat_epochs = 1.0  # quantization-aware fine-tuning passes over the train split
    config.export.qat_learning_rate = 1e-3  # peak, cosine to 0
    config.export.max_eval_examples = config_dict.placeholder(int)  # self-check on the first N
    config.export.eval_batch_size = 250
    config.export.debug_quantization = False  # per-layer int8 error table
    # Segmentation: output the class id per pixel (uint8, computed in the graph as
    # segmentation.mask_upsampling says) instead of the per-pixel class scores.
    config.export.category_mask = False
    # TFLite metadata in every file (name, description, input normalization, labels, output
    # roles) for MediaPipe Tasks and the TFLite Task Library: see mnv2_tf/export/app.py.
    config.export.metadata = True
    # The labels packed in the files, one per line in class order ("": the dataset's).
    config.export.labels = ""
    # True: refuse settings, and files, that MediaPipe Tasks cannot run.
    config.export.mediapipe = False

    config.bench = ml_collections.ConfigDict()
    config.bench.threads = "1,2"  # comma-separated thread counts
    config.bench.warmup_runs = 10
    config.bench.num_runs = 50
    return config


def load_file(spec: str) -> ml_collections.ConfigDict:
    """The ConfigDict of a config file `path[:variant]`, as `--config=path[:variant]` builds it.

    The one way to load a config file by path (benchmarks, experiments, tests)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"config file {path} not found; pass a configs/*.py file")
    module_spec = importlib.util.spec_from_file_location("_mnv2_tf_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


# Sections the trainer adds to config.json beside the config's own: facts of the run.
RUN_FACTS = ("preprocessing", "dataset", "runtime", "init")


def load_saved(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
    """A training workdir's config (fields added since it was written take their
    defaults) and the trainer's facts of the run (`preprocessing`, `dataset`, `runtime`)."""
    path = os.path.join(workdir, "config.json")
    saved = fileio.read_json(path)
    if saved is None:
        raise UserError(
            f"{path} not found: --workdir must be a training workdir "
            "(run train.py --workdir=DIR first)"
        )
    facts = {k: saved.pop(k) for k in RUN_FACTS if k in saved}
    config = base_config()
    try:
        for section, values in saved.items():
            if isinstance(values, dict):
                for key, value in values.items():
                    config[section][key] = value
            else:
                config[section] = values
    except (KeyError, AttributeError, TypeError) as e:
        raise UserError(f"{path} is not a config this version understands ({e})") from e
    return config, facts


def set_fields(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """A copy of `config` with {"model.linear_bottleneck": False, ...} applied; an unknown
    field is a KeyError."""
    import copy

    config = copy.deepcopy(config)
    with config.unlocked():
        for field, value in overrides.items():
            section, key = field.split(".")
            if key not in config[section]:
                raise KeyError(f"no config field {field}")
            config[section][key] = value
    return config


def parse_list(value: str, kind=str, field: str = "") -> tuple:
    """A comma-separated config field ("float32,int8", "1,2") as a tuple of `kind`."""
    try:
        return tuple(kind(v.strip()) for v in str(value).split(",") if v.strip())
    except ValueError as e:
        raise UserError(f"config field {field}: {value!r} is not a comma-separated list") from e


def preprocessing_of(config: ml_collections.ConfigDict) -> Preprocessing:
    """The model's preprocessing constants, from the config's model section."""
    return Preprocessing(
        input_size=config.model.input_size, crop_fraction=config.model.crop_fraction
    )


def model_kwargs(model_cfg, num_classes: int) -> dict:
    """Arguments of `models.build` from the config's model section."""
    kwargs = dict(
        alpha=model_cfg.alpha,
        input_shape=(model_cfg.input_size, model_cfg.input_size, 3),
        num_classes=num_classes,
        dropout=model_cfg.dropout,
        output_stride=model_cfg.output_stride,
        remove_early_strides=model_cfg.remove_early_strides,
        atrous=model_cfg.atrous,
        bn_momentum=model_cfg.bn_momentum,
        bn_epsilon=model_cfg.bn_epsilon,
    )
    blocks = model_cfg.get("blocks") or ()
    if model_cfg.name == "mobilenet_v2":
        kwargs.update(
            expansion=model_cfg.expansion,
            linear_bottleneck=model_cfg.linear_bottleneck,
            shortcut=model_cfg.shortcut,
        )
        if blocks:
            try:
                kwargs["block_specs"] = tuple(
                    models.BlockSpec(float(t), int(c), int(n), int(s)) for t, c, n, s in blocks
                )
            except (TypeError, ValueError) as e:
                raise UserError(
                    f"model.blocks must be rows (t, c, n, s) of numbers, got {blocks!r}"
                ) from e
    elif model_cfg.name != "mobilenet_v1":
        raise UserError(f"unknown model.name {model_cfg.name!r}; use mobilenet_v2 or mobilenet_v1")
    elif blocks:
        raise UserError("model.blocks is MobileNetV2's table; leave it empty for mobilenet_v1")
    return kwargs


def build_model(model_cfg, num_classes: int, **overrides):
    """The config's model (`overrides` on top of `model_kwargs`). A model section the
    builder rejects (an input smaller than the network's stride, alpha <= 0, ...) is a
    UserError: one line, not a traceback."""
    kwargs = {**model_kwargs(model_cfg, num_classes), **overrides}
    try:
        return models.build(model_cfg.name, **kwargs)
    except ValueError as e:
        raise UserError(f"config model section: {e}") from e
