"""Tasks on the MobileNet backbone (see `base.Task`), selected by `config.task`."""

from __future__ import annotations

from mnv2_tf.errors import UserError
from mnv2_tf.tasks.base import Column, Comparison, Evaluator, Task
from mnv2_tf.tasks.classification import Classification

TASKS: dict[str, type[Task]] = {"classification": Classification}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; config.task must be one of {', '.join(TASKS)}")
    return TASKS[name]


def get(config, num_classes: int) -> Task:
    """The task `config.task` names, for `num_classes` classes."""
    return task_class(config.task)(config, num_classes)


__all__ = [
    "TASKS",
    "Classification",
    "Column",
    "Comparison",
    "Evaluator",
    "Task",
    "get",
    "task_class",
]
