"""Fashion-MNIST, offline, on a CPU: the project's default experiment.

    python train.py --config=configs/fashion_mnist.py --workdir=runs/fmnist
    python train.py --config=configs/fashion_mnist.py:quick --workdir=runs/fmnist_quick

Reads the IDX files of Debian's `dataset-fashion-mnist` package. 28 px images are resized
to 32 px. The paper's stride 32 would leave a 1x1 map: the stem's stride is removed
(`remove_early_strides=1`) and the network stops downsampling at stride 8
(`output_stride=8, atrous=False`), so the 64- to 320-channel blocks work on 4x4 maps.
Measured side by side for 3 epochs: 89.6% top-1 against 88.5% for stride 16 (2x2 maps),
at 0.84x its speed; removing the second early stride instead costs 2.2x the time per
image, and keeping the stem stride with alpha 0.5 reached 86.7%. Training at the native
28 px (the network allows it) is 1.29x faster but reached 88.0% against 89.5% at
32 px (3 epochs, seed 0); with expansion 4 as well, 88.3%.

The recipe is the modern one (SGD, warm-up, cosine) and lightly regularized: the paper's
RMSProp schedule is tuned for 300+ ImageNet epochs, and a 10-epoch CPU budget (27 to 33
minutes on 2 cores, as fast as the machine runs that day: benchmarks/results/fashion_mnist.json)
underfits rather than overfits.
Measured for 3 epochs side by side (seed 0): weight decay 4e-4 89.5% top-1 against 89.1% at
the ImageNet 4e-5; no label smoothing and no dropout 81.1%; learning rate 0.4 per 256 images
85.6% (evaluation unstable after epoch 2).
"""

from mnv2_tf.config import base_config


def get_config(variant: str = ""):
    config = base_config()
    config.model.alpha = 0.35
    config.model.input_size = 32
    config.model.remove_early_strides = 1
    config.model.output_stride = 8
    config.model.atrous = False
    config.model.dropout = 0.1

    config.data.source = "idx"
    config.data.data_dir = "/usr/share/datasets/fashion-mnist"
    config.data.augment = "small"
    config.data.small_pad = 4
    config.data.random_erasing = 0.0

    config.train.epochs = 10
    config.train.batch_size = 128
    config.train.optimizer = "sgd"
    config.train.learning_rate = 0.2
    config.train.lr_batch_size = 256
    config.train.schedule = "cosine"
    config.train.warmup_epochs = 1.0
    config.train.weight_decay = 4e-4
    config.train.label_smoothing = 0.1
    config.train.ema_decay = 0.999
    if variant == "quick":
        config.train.epochs = 2
        config.data.max_train_examples = 6000
        config.data.max_eval_examples = 2000
        # 94 steps: BN statistics at momentum 0.99 would still be 39% their initial values
        # (evaluation at chance); 0.9 and a shorter EMA follow the weights in time.
        config.model.bn_momentum = 0.9
        config.train.ema_decay = 0.99
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of fashion_mnist.py; use '' or 'quick'")
    return config
