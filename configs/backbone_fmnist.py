"""The named backbone `fmnist` as an experiment of its own (what `model.init_from=backbone:fmnist`
trains once into ~/.cache/mnv2_tf/backbones; see mnv2_tf/backbones.py for the recipe):

    python train.py --config=configs/backbone_fmnist.py --workdir=runs/backbone
"""

from mnv2_tf import backbones


def get_config(variant: str = ""):
    if variant:
        raise ValueError(f"unknown variant {variant!r} of backbone_fmnist.py; use ''")
    return backbones.fmnist_config()
