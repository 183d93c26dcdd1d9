"""Tasks on the MobileNet backbone (see `base.Task`), selected by `config.task`."""

from __future__ import annotations

from mnv2_tf.errors import UserError
from mnv2_tf.tasks.base import Column, Comparison, Evaluator, Task
from mnv2_tf.tasks.classification import Classification
from mnv2_tf.tasks.detection import Detection
from mnv2_tf.tasks.segmentation import Segmentation

TASKS: dict[str, type[Task]] = {
    "classification": Classification,
    "detection": Detection,
    "segmentation": Segmentation,
}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; config.task must be one of {', '.join(TASKS)}")
    return TASKS[name]


def get(config, num_classes: int, class_names: list[str] | None = None) -> Task:
    """The task `config.task` names, for `num_classes` classes (named `class_names`)."""
    return task_class(config.task)(config, num_classes, class_names)


__all__ = [
    "TASKS",
    "Classification",
    "Column",
    "Comparison",
    "Detection",
    "Evaluator",
    "Segmentation",
    "Task",
    "get",
    "task_class",
]
