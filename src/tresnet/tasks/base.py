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
from tresnet.data.train_transforms import create_train_transform
from tresnet.data.transforms import normalisation
from tresnet.errors import ConfigError
from tresnet.models.registry import HEADS

DEFAULT_THRESHOLD = 0.5  # a label is predicted when its sigmoid probability exceeds this


@dataclass(frozen=True)
class NetworkSpec:
    """What a run asks of its network: the model ``name`` (a registered backbone), ``num_classes`` outputs (None:
    the checkpoint's), the ``head`` kind (None: the checkpoint's, else the task's default), init weights
    (``checkpoint``: None for a fresh network), the options every family takes (``drop_rate``,
    ``drop_path_rate``, ``norm``), ``memory_efficient`` (TResNet's lean residual tails), the side ``img_size`` it
    runs at (None: the model's; checked against the network) and the task's own ``options`` for the network (a
    detector's: None for its defaults)."""

    name: str
    num_classes: int | None
    head: str | None = None
    checkpoint: str | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm: str | None = None
    memory_efficient: bool = False
    img_size: int | None = None
    options: Any = None


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

    def add(self, logits: Any, targets: Any) -> None: ...

    def postfix(self) -> dict: ...

    def result(self, seconds: float, info: DistInfo | None = None) -> Scores: ...


class Task:
    """The base of every task: the defaults below suit a task whose outputs are one logit per class.

    Subclasses set the class attributes and implement the methods that raise :class:`NotImplementedError`.
    """

    name: ClassVar[str]  # the word in checkpoints, recipes and the --task option
    metric: ClassVar[str]  # the score that picks the best weights: a key of metrics.csv after val_ / ema_
    metric_title: ClassVar[str]  # how messages name it ("top-1")
    validation_loss: ClassVar[str | None]  # the loss evaluation reports ("cross-entropy"); None: it reports none
    losses: ClassVar[tuple[str, ...]]  # the losses it trains with; the first is the default
    columns: ClassVar[tuple[str, ...]]  # its columns of metrics.csv
    # one class per image: a data set's classes are mapped to the outputs by name (a subset of them scored over
    # its classes); otherwise the data must name the model's classes, in order
    maps_classes: ClassVar[bool] = False
    heads: ClassVar[tuple[str, ...]] = HEADS  # the heads it can put on a backbone; the first is the default
    distils: ClassVar[bool] = True  # whether a teacher's outputs can train its model (kd, th-kd)
    mixes_batches: ClassVar[bool] = True  # whether mixup and cutmix apply to its targets
    section: ClassVar[str | None] = None  # the section of a run's configuration that only this task reads
    folds: ClassVar[bool] = True  # whether its networks have deployment forms in other number formats (bf16, int8)
    draws: ClassVar[bool] = False  # whether its answers can be drawn on the image (a detector's boxes)

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
        task with another kind of head (a detector's) builds it here around the backbone. Raises
        :class:`~tresnet.errors.InputSizeError` for an ``img_size`` the network cannot take."""
        model = create(spec.name, checkpoint_path=spec.checkpoint, num_classes=spec.num_classes,
                       drop_rate=spec.drop_rate, drop_path_rate=spec.drop_path_rate, norm=spec.norm,
                       memory_efficient=spec.memory_efficient, head=self.check_head(spec.head), task=self.name)
        if spec.img_size is not None:
            model.check_input_size(spec.img_size, spec.img_size)
        return model

    # training --------------------------------------------------------------------------------------------

    def random_targets(self, batch: int, num_outputs: int, generator: torch.Generator | None = None, *,
                       img_size: int = 64) -> Any:
        """Targets of the task's form for ``batch`` images of ``img_size`` pixels and a model with ``num_outputs``
        outputs, drawn at random (to measure a training step, or to check a loss)."""
        raise NotImplementedError

    def create_loss(self, name: str | None, options: LossOptions) -> nn.Module:
        """The loss module ``name`` (None: the default) configured by ``options``."""
        raise NotImplementedError

    def train_transform(self, augmentation: Any, pretrained_cfg: dict, img_size: int) -> Callable:
        """The per-image training transform ``augmentation`` (a run's augmentation section) describes, to
        ``img_size`` and normalised as the model's configuration says; :class:`ConfigError` for an augmentation of
        another task's targets (``scale_jitter`` moves boxes)."""
        if tuple(augmentation.scale_jitter) != (1.0, 1.0):
            raise ConfigError("--scale-jitter moves boxes: it applies to --task detection; use --scale for the "
                              "random-resized crop")
        norm = normalisation(pretrained_cfg)
        return create_train_transform(img_size, augmentation.per_image(),
                                      interpolation=pretrained_cfg.get("interpolation", "bilinear"),
                                      **(dict(mean=norm[0], std=norm[1]) if norm is not None else {}))

    def training_loss_title(self, loss: str) -> str | None:
        """The training loss's name for the plot when it differs from the validation loss, else None."""
        return loss.upper()

    def describe(self, loss: str) -> str:
        """The task as the training log's first line names it (empty for the default task)."""
        return f"{self.name} ({loss} loss), "

    def move(self, inputs: Any, targets: Any, device: torch.device, *, channels_last: bool = False) -> tuple:
        """A batch's inputs and targets on ``device`` (the inputs channels-last if asked)."""
        inputs = inputs.to(device, non_blocking=True)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, targets.to(device, non_blocking=True)

    def training_loss(self, net: Callable[..., Any], criterion: nn.Module, inputs: Any, targets: Any) -> Tensor:
        """The loss of one training step: ``criterion`` (:meth:`create_loss`'s) of ``net``'s outputs and the
        targets (a detector computes its own losses from the targets)."""
        return criterion(net(inputs), targets)

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
              class_subset: Sequence[int] | None = None, data: Any = None) -> Tally:
        """A fresh :class:`Tally` for one evaluation on ``device`` of the set ``data`` (a task that scores
        against what the set knows, such as its category ids, reads it there)."""
        raise NotImplementedError

    def row(self, val: Scores, ema: Scores | None) -> dict[str, Any]:
        """The task's columns of a ``metrics.csv`` row, from the model's and the EMA's scores."""
        raise NotImplementedError

    # inference -------------------------------------------------------------------------------------------

    def check_run(self, number_format: str, results_file: Any = None) -> None:
        """:class:`ConfigError` for what a validation or prediction asks that the task cannot give: a number format
        other than fp32 for a task whose networks have no folded form, a results file for one that writes none."""
        if number_format != "fp32" and not self.folds:
            raise ConfigError(f"--number-format {number_format} folds a classifier: a {self.name} network runs in "
                              f"fp32 (use --precision for autocast)")
        if results_file is not None:
            raise ConfigError(f"--detections writes boxes: a {self.name} model has none")

    def check_input_size(self, model: nn.Module, height: int, width: int) -> None:
        """:class:`~tresnet.errors.InputSizeError` for an input size the network cannot take."""
        model.check_input_size(height, width)

    def eval_transform(self, preprocessing: Any) -> Callable:
        """The evaluation transform of an image file (``preprocessing``'s: resize, crop, normalise)."""
        return preprocessing.transform()

    def batch(self, images: list[Tensor]) -> Any:
        """The network's input for a list of evaluated images (a stacked tensor)."""
        return torch.stack(images)

    def draw(self, image: Tensor, answer: Any) -> Tensor:
        """``image`` (float in [0, 1], as :meth:`eval_transform` gives it) with ``answer`` drawn on it, as ``uint8``
        ``(3, H, W)`` (a task that :attr:`draws`)."""
        raise ConfigError(f"a {self.name} answer is not drawn on its image")

    def write_results(self, tally: Any, path: Any) -> None:
        """Write each image's predictions of a finished evaluation to ``path`` (a task with a results format)."""
        raise ConfigError(f"a {self.name} evaluation writes no results file")

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
