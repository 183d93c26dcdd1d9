"""Choosing the tf.distribute strategy and the mixed-precision policy.

"auto" follows TensorFlow's distributed-training guide: TF_CONFIG in the environment means a
multi-worker cluster (MultiWorkerMirroredStrategy); a TPU (Colab's TPU runtime, or
COLAB_TPU_ADDR on the older one) means TPUStrategy; several GPUs mean MirroredStrategy;
otherwise the default strategy. Mixed precision "auto" is float16 on GPUs and bfloat16 on
TPUs (the Keras mixed-precision guide), float32 on CPUs.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
import tf_keras
from absl import logging

from mnv2_tf.errors import UserError

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
POLICIES = ("auto", "none", "mixed_float16", "mixed_bfloat16")


def split_cpu(num_devices: int) -> None:
    """Splits the host CPU into `num_devices` logical devices (before TensorFlow starts)."""
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
    )


def _tpu_resolver():
    if not (os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME") or _has_local_tpu()):
        return None
    try:
        tpu = os.environ.get("TPU_NAME", "local" if _has_local_tpu() else "")
        return tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    except (ValueError, tf.errors.NotFoundError):
        return None


def _has_local_tpu() -> bool:
    # A TPU VM runtime exposes /dev/accel* (v2-v4) or /dev/vfio (v5e and later).
    return os.path.exists("/dev/accel0") or os.path.isdir("/dev/vfio")


def _tpu_strategy(resolver) -> tf.distribute.Strategy:
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The strategy called `name`, or the one this machine calls for ("auto")."""
    if name not in STRATEGIES:
        raise UserError(f"unknown train.strategy {name!r}; choose one of {STRATEGIES}")
    if name == "auto":
        if "TF_CONFIG" in os.environ:
            name = "multi_worker"
        elif (resolver := _tpu_resolver()) is not None:
            return _tpu_strategy(resolver)
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("train.strategy='multi_worker' needs TF_CONFIG in the environment")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise UserError(f"TF_CONFIG is not valid JSON ({e})") from e
        communication = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication)
    resolver = _tpu_resolver()
    if resolver is None:
        raise UserError("train.strategy='tpu' but no TPU was found; use a TPU runtime or 'auto'")
    return _tpu_strategy(resolver)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The public name (MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy)."""
    for cls, name in (
        (tf.distribute.MultiWorkerMirroredStrategy, "MultiWorkerMirroredStrategy"),
        (tf.distribute.TPUStrategy, "TPUStrategy"),
        (tf.distribute.MirroredStrategy, "MirroredStrategy"),
        (tf.distribute.OneDeviceStrategy, "OneDeviceStrategy"),
    ):
        if isinstance(strategy, cls):
            return name
    return "default"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the workdir (single process, or the cluster's chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0)


def set_mixed_precision(policy: str, strategy: tf.distribute.Strategy) -> str:
    """Sets the global Keras policy; returns its name."""
    if policy not in POLICIES:
        raise UserError(f"unknown train.mixed_precision {policy!r}; choose one of {POLICIES}")
    if policy == "auto":
        if isinstance(strategy, tf.distribute.TPUStrategy):
            policy = "mixed_bfloat16"
        elif tf.config.list_logical_devices("GPU"):
            policy = "mixed_float16"
        else:
            policy = "none"
    name = "float32" if policy == "none" else policy
    tf_keras.mixed_precision.set_global_policy(name)
    logging.info("mixed precision policy: %s", name)
    return name
