"""Fashion-MNIST, offline, on a CPU: the project's default experiment.

    python train.py --config=configs/fashion_mnist.py --workdir=runs/fmnist
    python train.py --config=configs/fashion_mnist.py:quick --workdir=runs/fmnist_quick

Reads the IDX files of Debian's `dataset-fashion-mnist` package. 28 px images are resized
to 32 px; the stem's stride is removed (`remove_early_strides=1`) so the last feature map
is 2x2 rather than 1x1 (removing the next stride too gives 4x4 but costs 2.2x the time per
image on a 2-core CPU). The recipe is the modern one (SGD, warm-up, cosine) and lightly
regularized: the paper's RMSProp schedule is tuned for 300+ ImageNet epochs, and an
8-epoch CPU budget underfits rather than overfits.
"""

from mnv2_tf.train.config import base_config


def get_config(variant: str = ""):
    config = base_config()
    config.model.alpha = 0.35
    config.model.input_size = 32
    config.model.remove_early_strides = 1
    config.model.dropout = 0.1

    config.data.source = "idx"
    config.data.data_dir = "/usr/share/datasets/fashion-mnist"
    config.data.augment = "small"
    config.data.small_pad = 4
    config.data.random_erasing = 0.0

    config.train.epochs = 8
    config.train.batch_size = 128
    config.train.optimizer = "sgd"
    config.train.learning_rate = 0.2
    config.train.lr_batch_size = 256
    config.train.schedule = "cosine"
    config.train.warmup_epochs = 1.0
    config.train.weight_decay = 4e-5
    config.train.label_smoothing = 0.1
    config.train.ema_decay = 0.999
    if variant == "quick":
        config.train.epochs = 2
        config.data.max_train_examples = 6000
        config.data.max_eval_examples = 2000
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of fashion_mnist.py; use '' or 'quick'")
    return config
