"""The two classification tasks: ``multiclass`` (one class per image, softmax, top-1) and ``multilabel``
(any set of classes per image, one sigmoid per class, mAP). One vocabulary for the Python API, the
checkpoint metadata (``task``), the recipes and the ``--task`` option of every command."""

from __future__ import annotations

from tresnet.errors import ConfigError

MULTICLASS = "multiclass"
MULTILABEL = "multilabel"
TASKS = (MULTICLASS, MULTILABEL)
DEFAULT_TASK = MULTICLASS
DEFAULT_THRESHOLD = 0.5  # a label is predicted when its sigmoid probability exceeds this


def check_task(task: str) -> str:
    """``task`` if it is one of :data:`TASKS`; :class:`ConfigError` naming the choices otherwise."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    return task


def check_threshold(threshold: float) -> float:
    """``threshold`` if it lies in (0, 1); :class:`ConfigError` otherwise."""
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"the threshold is a probability: it must lie in (0, 1), got {threshold}")
    return float(threshold)


__all__ = ["DEFAULT_TASK", "DEFAULT_THRESHOLD", "MULTICLASS", "MULTILABEL", "TASKS", "check_task",
           "check_threshold"]
