"""What a task is to the loops, and the registry of tasks.

A task is what a model is trained and evaluated *for*: one class per image (``multiclass``), any set of classes
per image (``multilabel``), and whatever comes next. It is an object, registered by its name the way model
families are, and it owns everything that differs between tasks:

- the network it puts together from a backbone: by default the family's network with one of the classifier
  heads (:data:`tresnet.models.registry.HEADS`) sized for the classes (:meth:`Task.create_network`);
- its losses (the first is the default) and the divergence distillation adds to them;
- how its outputs become probabilities (and back: the blend of two predictions);
- its evaluation: a tally fed batch by batch, whose result is the task's typed scores (``score`` picks the best
  weights of a training run; ``columns`` are its columns in ``metrics.csv``);
- its validation report (a dataclass whose ``to_dict()`` is what ``validate --json`` writes) and its
  prediction format (what ``predict`` prints and writes);
- the labels a model of a known class count gets by default;
- what its checkpoints record beside the weights.

The trainer, the evaluation loop, ``validate``, ``predict`` and ``benchmark`` ask the task; no code outside a
task's own module compares a task's name. The data sources declare which tasks they serve
(:mod:`tresnet.data.sources`). How to add a task: CONTRIBUTING.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from tresnet.collectives import DistInfo
from tresnet.errors import ConfigError
from tresnet.models.registry import HEADS

DEFAULT_THRESHOLD = 0.5  # a label is predicted when its sigmoid probability exceeds this


@dataclass(frozen=True)
class NetworkSpec:
    """What a run asks of its network: the model ``name`` (a registered backbone), ``num_classes`` outputs, the
    ``head`` kind (None: the checkpoint's, else the task's default), init weights (``checkpoint``: None for a
    fresh network) and the options every family takes (``drop_rate``, ``drop_path_rate``, ``norm``)."""

    name: str
    num_classes: int
    head: str | None = None
    checkpoint: str | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm: str | None = None


# How a task builds a family's network: :func:`tresnet.create_model` (handed in, so that tasks do not import the
# factory, which imports them).
CreateModel = Callable[..., nn.Module]


def check_threshold(threshold: float) -> float:
    """``threshold`` if it lies in (0, 1); :class:`ConfigError` otherwise."""
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"the threshold is a probability: it must lie in (0, 1), got {threshold}")
    return float(threshold)


@dataclass(frozen=True)
class LossOptions:
    """The settings of the losses (each loss reads its own): label smoothing of the cross-entropy, ASL's
    focusing exponents and clip, the focal loss's exponent, and the reduction of the multi-label losses."""

    label_smoothing: float = 0.0
    gamma_neg: float = 4.0
    gamma_pos: float = 0.0
    clip: float = 0.05
    focal_gamma: float = 2.0
    reduction: str = "mean"


class Scores(Protocol):
    """What an evaluation gives, whatever the task: its headline ``score`` (a fraction, higher is better),
    the mean validation ``loss``, the ``images`` evaluated, and ``to_dict()``."""

    score: float
    loss: float
    images: int

    def to_dict(self) -> dict: ...


class Tally(Protocol):
    """The running sums of one evaluation: fed ``(logits, targets)`` batch by batch, kept on its ``device``."""

    device: torch.device
    images: int
    skipped: int

    def add(self, logits: Tensor, targets: Tensor) -> None: ...

    def postfix(self) -> dict: ...

    def result(self, seconds: float, info: DistInfo | None = None) -> Scores: ...


class Task:
    """The base of every task: the defaults below suit a task whose outputs are one logit per class.

    Subclasses set the class attributes and implement the methods that raise :class:`NotImplementedError`.
    """

    name: ClassVar[str]  # the word in checkpoints, recipes and the --task option
    metric: ClassVar[str]  # the score that picks the best weights: a key of metrics.csv after val_ / ema_
    metric_title: ClassVar[str]  # how messages name it ("top-1")
    validation_loss: ClassVar[str]  # the loss evaluation reports ("cross-entropy")
    losses: ClassVar[tuple[str, ...]]  # the losses it trains with; the first is the default
    columns: ClassVar[tuple[str, ...]]  # its columns of metrics.csv
    # one class per image: a data set's classes are mapped to the outputs by name (a subset of them scored over
    # its classes); otherwise the data must name the model's classes, in order
    maps_classes: ClassVar[bool] = False
    heads: ClassVar[tuple[str, ...]] = HEADS  # the heads it can put on a backbone; the first is the default

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @property
    def default_loss(self) -> str:
        return self.losses[0]

    def check_loss(self, name: str | None) -> str:
        """``name`` (None: the default) if the task trains with it; :class:`ConfigError` naming the fitting ones."""
        name = self.default_loss if name is None else name
        if name not in self.losses:
            raise ConfigError(f"loss {name!r} does not fit task {self.name!r}: use one of {', '.join(self.losses)}")
        return name

    def check_head(self, head: str | None) -> str | None:
        """``head`` (None: the checkpoint's or the default) if the task puts it on a backbone; :class:`ConfigError`
        naming the heads it puts otherwise."""
        if head is not None and head not in self.heads:
            raise ConfigError(f"head {head!r} does not fit task {self.name!r}: use one of {', '.join(self.heads)}")
        return head

    def create_network(self, create: CreateModel, spec: NetworkSpec) -> nn.Module:
        """The network a run of this task trains: by default the family's network ``create`` builds (it is
        :func:`tresnet.create_model`) with the classifier head ``spec.head`` for ``spec.num_classes`` outputs. A
        task with another kind of head (a detector's) builds it here around the backbone."""
        return create(spec.name, checkpoint_path=spec.checkpoint, num_classes=spec.num_classes,
                      drop_rate=spec.drop_rate, drop_path_rate=spec.drop_path_rate, norm=spec.norm,
                      head=self.check_head(spec.head), task=self.name)

    # training --------------------------------------------------------------------------------------------

    def random_targets(self, batch: int, num_outputs: int, generator: torch.Generator | None = None) -> Tensor:
        """Targets of the task's form for ``batch`` images of a model with ``num_outputs`` outputs, drawn at
        random (to measure a training step, or to check a loss)."""
        raise NotImplementedError

    def create_loss(self, name: str | None, options: LossOptions) -> nn.Module:
        """The loss module ``name`` (None: the default) configured by ``options``."""
        raise NotImplementedError

    def training_loss_title(self, loss: str) -> str | None:
        """The training loss's name for the plot when it differs from the validation loss, else None."""
        return loss.upper()

    def describe(self, loss: str) -> str:
        """The task as the training log's first line names it (empty for the default task)."""
        return f"{self.name} ({loss} loss), "

    def divergence(self, student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
        """``T^2`` times the divergence from the teacher's softened prediction to the student's (distillation)."""
        raise NotImplementedError

    def probabilities(self, logits: Tensor) -> Tensor:
        """The model's prediction as probabilities (float32)."""
        raise NotImplementedError

    def logits_of(self, probabilities: Tensor) -> Tensor:
        """Logits whose :meth:`probabilities` are ``probabilities`` (a blend of two predictions, evaluated)."""
        raise NotImplementedError

    def threshold_of(self, threshold: float) -> float | None:
        """The decision threshold the task's answers use (a multi-label model's), None when they use none."""
        return None

    def checkpoint_record(self, *, threshold: float) -> dict[str, str]:
        """What a checkpoint of this task records beside the weights and the task's name."""
        return {}

    # evaluation ------------------------------------------------------------------------------------------

    def tally(self, device: torch.device, *, threshold: float = DEFAULT_THRESHOLD,
              class_subset: Sequence[int] | None = None) -> Tally:
        """A fresh :class:`Tally` for one evaluation on ``device``."""
        raise NotImplementedError

    def row(self, val: Scores, ema: Scores | None) -> dict[str, Any]:
        """The task's columns of a ``metrics.csv`` row, from the model's and the EMA's scores."""
        raise NotImplementedError

    # inference -------------------------------------------------------------------------------------------

    def default_labels(self, num_classes: int) -> tuple[list[str] | None, list[str] | None]:
        """The labels (and ImageNet synsets) a model of ``num_classes`` outputs has when nothing names them."""
        return None, None

    def report(self, run: Any, scores: Scores) -> Any:
        """The typed validation report of ``run`` (a :class:`tresnet.inference.validate.Validation`)."""
        raise NotImplementedError

    def answers(self, names: list[str], logits: Tensor, labels: list[str], synsets: Sequence[str] | None, *,
                topk: int, threshold: float) -> list:
        """The prediction of each image ``names`` gives (one row of ``logits`` each)."""
        raise NotImplementedError

    def failure(self, name: str, message: str) -> Any:
        """The prediction of an input that could not be read."""
        raise NotImplementedError


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Register ``task`` under its name (replacing a task of that name); return it."""
    _TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove the task called ``name`` (a plug-in's, when it is unloaded)."""
    _TASKS.pop(name, None)


def list_tasks() -> list[str]:
    """The registered tasks' names, the built-in ones first."""
    return list(_TASKS)


def get_task(task: str | Task) -> Task:
    """The registered task called ``task`` (a task object is returned as it is); :class:`ConfigError`
    naming the choices for an unknown name."""
    if isinstance(task, Task):
        return task
    try:
        return _TASKS[task]
    except KeyError:
        raise ConfigError(f"unknown task {task!r}: use one of {', '.join(_TASKS)}") from None


__all__ = ["DEFAULT_THRESHOLD", "LossOptions", "NetworkSpec", "Scores", "Tally", "Task", "check_threshold", "get_task",
           "list_tasks", "register_task", "unregister_task"]
