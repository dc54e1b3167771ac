"""The tasks a model is trained and evaluated for, as objects the loops ask (:class:`Task`): ``multiclass``
(:mod:`tresnet.tasks.classification`), ``multilabel`` (:mod:`tresnet.tasks.multilabel`) and ``detection``
(:mod:`tresnet.tasks.detection`), registered by
name. ``get_task(name)`` finds one; ``register_task`` adds a plug-in's (see CONTRIBUTING.md, "Adding a task").

One vocabulary for the Python API, the checkpoint metadata (``task``), the recipes and the ``--task`` option of
every command: the registered names."""

from __future__ import annotations

from tresnet.tasks import classification, detection, multilabel
from tresnet.tasks.base import (
    DEFAULT_THRESHOLD,
    LossOptions,
    NetworkSpec,
    Scores,
    Tally,
    Task,
    check_threshold,
    get_task,
    list_tasks,
    register_task,
    unregister_task,
)

for _builtin in (classification.TASK, multilabel.TASK, detection.TASK):
    register_task(_builtin)

DEFAULT_TASK = classification.TASK.name

__all__ = ["DEFAULT_TASK", "DEFAULT_THRESHOLD", "LossOptions", "NetworkSpec", "Scores", "Tally", "Task", "check_threshold",
           "get_task", "list_tasks", "register_task", "unregister_task"]
