"""The task seam: what differs between classification, detection and segmentation.

The paper applies one backbone to three tasks (Section 6). The stages (trainer, exporter,
pipeline, reports) are written once; everything that depends on what a label is and what
the network outputs lives in a `Task`:

- the model on the backbone (training outputs) and the inference model that `final/`,
  `best/` and export use (same weights, deployable outputs);
- the per-example preprocessing that transforms pixels and labels together, and the labels
  of a padding example;
- the training loss and running training figures, the evaluation metrics (and which one
  picks `best/`);
- the TFLite serving outputs, how a `.tflite` is compared with the Keras model it came from
  and what the comparison must show (the export's self-check), and the fine-tuning that
  quantization-aware training runs;
- the columns that reports show for it.

Tasks stand below the stages: a task imports models, data, the task's own machinery
(detection/, segmentation/), the file I/O, config, errors and `app_io` (what its outputs are
to an app, as plain data), never train/, export/ or pipeline/ (those import it; a test
checks). A task is a plain class (as tensorflow/models'
`official/core/base_task.py`, without its framework), built for a config and a number of
classes; `mnv2_tf.tasks.TASKS` maps `config.task` to it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tf_keras

from mnv2_tf import app_io, data
from mnv2_tf import config as config_lib
from mnv2_tf.models.common import Preprocessing


@dataclasses.dataclass(frozen=True)
class Column:
    """One column a report shows for an exported model: `key` of its entry in the export
    report, a header, and how to print it ("pct": 0.9123 -> 91.23, "float", "int")."""

    key: str
    header: str
    kind: str = "float"

    def format(self, value) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        if self.kind == "pct":
            return f"{100 * value:.2f}"
        if self.kind == "int":
            return str(int(value))
        return f"{value:.4g}"


class Evaluator:
    """Accumulates a task's evaluation metrics over the eval set, batch by batch, on the
    host (numpy): `update` with the batch (labels and `valid`) and the training model's
    outputs, `result` for the metrics (without the `eval_` prefix)."""

    def update(self, batch: dict, outputs) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        raise NotImplementedError


class Comparison:
    """Accumulates how a converted model's serving outputs compare with the Keras model's on
    the same batches (the export's self-check), and what the converted model scores."""

    def add(self, batch: dict, outputs: dict, reference: dict) -> None:
        raise NotImplementedError

    def summary(self) -> dict:
        raise NotImplementedError


_PROBED: dict[str, object] = {}


def probed(config, section: str, num_classes: int, compute: Callable[[], object]):
    """What a task reads off a probe of its network (feature map sizes, head layer names):
    `compute()` once per process for the same model settings (`config.model`, the task's
    `section`, the classes), since every stage builds the task again and each probe is a
    whole Keras model (2 s for a tiny detector). `compute` must return plain data."""
    key = json.dumps(
        [config.model.to_dict(), config[section].to_dict(), num_classes], sort_keys=True,
        default=str,
    )  # fmt: skip
    if key not in _PROBED:
        _PROBED[key] = compute()
    return _PROBED[key]


class Task:
    """Base class: one application of the backbone. Subclasses set the class attributes and
    implement the methods."""

    name: str = ""
    # metrics.json key that picks best/ (higher is better), and how reports call it.
    best_metric: str = ""
    best_label: str = ""
    # The export report's headline figure of a converted model (a key of its entry).
    headline: str = ""
    headline_label: str = ""
    # Running training figures besides the loss (keys of `train_metrics`).
    train_metric_names: tuple[str, ...] = ()
    # Layers that make up the head: trained alone while the backbone is frozen.
    head_layers: frozenset[str] = frozenset()
    # The TFLite model's batch dimension: None (any) or fixed (a dilated depthwise convolution
    # stays one op only at a fixed batch; LiteRT then runs the eval set in chunks of it).
    serving_batch: int | None = None
    # Integer models keep float32 outputs (io_type then applies to the input only).
    float_outputs: bool = False
    # The MediaPipe Tasks API that runs this task's models, and what the models are called
    # in their metadata ("image classifier").
    mediapipe_api: str = ""
    app_name: str = ""
    # A segmenter's activation on its scores, as an app must apply it (`app_io.ACTIVATIONS`;
    # MediaPipe's ImageSegmenterOptions); empty for the other tasks.
    output_activation: str = ""
    # `tfds.testing.mock_data`'s as_dataset_fn(builder, split, ..., count=N) for the dry run
    # of a TFDS source whose random examples TFDS cannot make itself; None: TFDS' own.
    tfds_mock_examples: Callable | None = None
    # The pipeline's report shows `examples_png` of the deployed model.
    draws_examples: bool = False
    # Columns of the export report and of the pipeline's summary table.
    export_columns: tuple[Column, ...] = ()
    summary_columns: tuple[Column, ...] = ()

    def __init__(self, config, num_classes: int, class_names: list[str] | None = None):
        self.config = config
        self.num_classes = num_classes
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])

    # --- model ---------------------------------------------------------------------------

    def build_model(self) -> tf_keras.Model:
        """The training model (raw outputs: logits)."""
        raise NotImplementedError

    def build_inference_model(self) -> tf_keras.Model:
        """The deployable model: the training model's layers and weights (same order, so
        `set_weights` of one fits the other), with deployable outputs."""
        raise NotImplementedError

    def build_backbone(self, **overrides) -> tf_keras.Model:
        """The config's network (`overrides`: builder arguments)."""
        return config_lib.build_model(self.config.model, self.num_classes, **overrides)

    # --- data ----------------------------------------------------------------------------

    @classmethod
    def load_source(cls, data_cfg, split: str) -> data.Source:
        """One split of the data this task reads (before the number of classes is known)."""
        return data.load(data_cfg, split)

    def example_fn(self, source: data.Source, preprocessing: Preprocessing, training: bool):
        """The per-example map of `source`: pixels and labels together."""
        return data.image_fn(self.config.data, source, preprocessing, training)

    def blank_labels(self, preprocessing: Preprocessing) -> dict:
        """The label fields of an eval padding example (never counted)."""
        raise NotImplementedError

    def dataset(
        self,
        preprocessing: Preprocessing,
        split: str,
        *,
        training: bool,
        batch_size: int,
        seed: int = 0,
        source: data.Source | None = None,
        data_cfg=None,
    ) -> tuple[tf.data.Dataset, data.Source]:
        """The batched dataset of `split` with this task's preprocessing."""
        data_cfg = data_cfg or self.config.data
        source = source or self.load_source(data_cfg, split)
        return data.make_dataset(
            data_cfg, preprocessing, split, training=training, batch_size=batch_size,
            seed=seed, source=source, example_fn=self.example_fn(source, preprocessing, training),
            blank=self.blank_labels(preprocessing),
        )  # fmt: skip

    # --- training and evaluation -------------------------------------------------------------

    def loss(self, batch: dict, outputs) -> tf.Tensor:
        """Per-example training loss [B] (float32), from the training model's outputs."""
        raise NotImplementedError

    def train_metrics(self, batch: dict, outputs) -> dict[str, tf.Tensor]:
        """Per-example running training figures [B], keyed by `train_metric_names`."""
        return {}

    def evaluator(self) -> Evaluator:
        raise NotImplementedError

    # --- export --------------------------------------------------------------------------

    def serving_outputs(self, model: tf_keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """The TFLite model's outputs (names and values) from the inference model."""
        raise NotImplementedError

    def output_metadata(self, labels_file: str) -> list[app_io.Tensor]:
        """What each output is to an app (`app_io.Tensor`, plain data), in the file's order:
        the role MediaPipe Tasks reads, the labels file (`labels_file`) it annotates. Empty:
        each output is described by its name only. export/ writes it as metadata."""
        return []

    def mediapipe_type_problems(self, output_types: list[str]) -> list[str]:
        """Why MediaPipe's task API would refuse outputs of these dtypes (or of this task's
        export settings), known before converting."""
        return []

    def mediapipe_output_problems(self, outputs: list) -> list[str]:
        """Why MediaPipe's task API would refuse these outputs (`convert.TensorInfo`s)."""
        return self.mediapipe_type_problems([o.dtype for o in outputs])

    def comparison(self) -> Comparison:
        raise NotImplementedError

    def mediapipe_agreement(self, litert: dict, mediapipe: dict, image_size) -> dict:
        """How MediaPipe's outputs (`mediapipe_client.py`'s, for this task's
        `mediapipe_api`) on a set of images compare with the `.tflite` model's through
        LiteRT on the same images (numpy arrays; `image_size` (height, width)); `passed`
        says they agree. Only for tasks with a `mediapipe_api`."""
        raise NotImplementedError

    def check(self, mode: str, summary: dict) -> str:
        """The self-check of a converted model: "passed", "unchecked: ..." (too little
        evidence, reported) or "failed: ..." (the file is rejected)."""
        raise NotImplementedError

    def examples_png(self, batch: dict, outputs: dict, preprocessing: Preprocessing) -> bytes:
        """A picture of a deployed model's outputs on a few eval images (`batch`, numpy,
        and the `.tflite` model's named `outputs` on them) for the pipeline's report; only
        for tasks with `draws_examples`."""
        raise NotImplementedError

    def finetune(self) -> tuple[Callable[[dict], tuple], tf_keras.losses.Loss, list]:
        """How quantization-aware training fine-tunes the inference model with `fit`:
        (example -> (inputs, targets), loss, metrics)."""
        raise NotImplementedError
