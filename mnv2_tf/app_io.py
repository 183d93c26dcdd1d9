"""What a model's inputs and outputs mean to an app: plain data, declared by the tasks.

A task says what each of its outputs is (its role, the labels file that annotates it, the
range one object spans) and which activation its scores have had; `export/metadata.py` turns
these declarations into the TFLite metadata flatbuffer that MediaPipe Tasks and the TFLite
Task Library read. This module stands below both, so the tasks never import a stage.
"""

from __future__ import annotations

import dataclasses

# A segmenter's scores as the app receives them: MediaPipe's ImageSegmenterOptions.activation
# ("NONE": the model outputs probabilities already).
ACTIVATIONS = ("NONE", "SIGMOID", "SOFTMAX")


@dataclasses.dataclass
class Tensor:
    """One input or output tensor's metadata.

    content: "image" (ImageProperties), "feature" or "bounding_box".
    normalization: (mean, std) of an input, per channel or one value for all.
    labels: (file name, type) of the labels file that annotates it ("TENSOR_AXIS_LABELS":
      one label per index of the last axis; "TENSOR_VALUE_LABELS": the tensor's values
      are indices into it).
    value_range: the dimensions one content object spans (Content.range), e.g. (2, 2) for
      the per-detection outputs [1, N] or [1, N, 4].
    """

    name: str
    description: str = ""
    content: str = "feature"
    color_space: str = "RGB"
    image_size: tuple[int, int] | None = None  # (width, height)
    normalization: tuple[list[float], list[float]] | None = None
    stats: tuple[list[float], list[float]] | None = None  # (min, max)
    labels: tuple[str, str] | None = None
    box_index: tuple[int, ...] = ()
    box_type: str = "BOUNDARIES"
    box_coordinates: str = "RATIO"
    value_range: tuple[int, int] | None = None
