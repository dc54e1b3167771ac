"""Knowledge distillation through classifier sharing: kd, th-kd and sh-kd in ``tresnet train``.

Ben-Baruch et al., "It's All in the Head: Representation Knowledge Distillation through Classifier
Sharing" (arXiv 2201.06945; Alibaba-MIIL/HeadSharingKD). With student logits ``s``, teacher logits ``t``
and temperature ``T``:

- ``kd``: ``CE(s, y) + alpha T^2 KL(softmax(t / T) || softmax(s / T))``, the KL summed over the classes
  and averaged over the images (Hinton et al.; the release's ``DistillKL``);
- ``th-kd``: a frozen copy of the teacher's classifier is applied to the student's features, giving
  ``s_th``, and ``beta T^2 KL(softmax(t / T) || softmax(s_th / T))`` is added (the release's ``KDTH``).
  The release needs equal embedding widths; when they differ we put a learned linear projection in
  front of the frozen classifier (our choice). The paper's inference blend
  ``(1 - w) softmax(s) + w softmax(s_th)`` is :class:`BlendedStudent`;
- ``sh-kd``: the teacher is trained with the student's classifier copied in and frozen
  (:func:`install_frozen_head`), then the student is distilled from it.

For a multi-label task the KL terms are the per-class binary ones, ``Bernoulli(sigmoid(t / T))`` against
``Bernoulli(sigmoid(s / T))``, averaged over images and classes. The teacher runs frozen in eval mode on
the student's batch, re-normalised as its own family expects (:class:`FrozenTeacher`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from tresnet.data.transforms import normalisation
from tresnet.errors import CheckpointError, ConfigError
from tresnet.factory import create_model
from tresnet.layers import MLDecoderHead
from tresnet.layers.ml_decoder import ml_decoder_options
from tresnet.models.common import ClassifierHead
from tresnet.tasks import Task, get_task
from tresnet.training.sections import DistillationSection
from tresnet.weights import find_pretrained

Normalisation = tuple[tuple[float, ...], tuple[float, ...]] | None  # (mean, std), None: RGB in [0, 1]


# --- losses ------------------------------------------------------------------------------------------


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
            task: str | Task = "multiclass") -> Tensor:
    """``T^2`` times the divergence from the teacher's softened prediction to the student's (float32), as the
    ``task`` defines it (:meth:`tresnet.tasks.Task.divergence`). Multiclass:
    ``KL(softmax(t / T) || softmax(s / T))`` summed over the classes, averaged over the images. Multilabel:
    the binary KL of each (image, class) pair, ``sigmoid(t / T)`` against ``sigmoid(s / T)``, averaged over the
    pairs. Gradients flow to the student only.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have one shape")
    return get_task(task).divergence(student_logits, teacher_logits, temperature)


class DistillationLoss(nn.Module):
    """``criterion(s, y) + weight * kd_loss(s, t) + head_weight * kd_loss(s_th, t)`` (the last for th-kd).

    ``forward(outputs, teacher_logits, targets)``: ``outputs`` are the student's logits, or the pair
    ``(logits, teacher-head logits)`` of :class:`StudentWithTeacherHead`. Targets may be soft (mixup): they
    reach ``criterion`` only; the KL terms compare with the teacher, who saw the same mixed images.
    """

    def __init__(self, criterion: nn.Module, *, task: str | Task, temperature: float = 4.0, weight: float = 1.0,
                 head_weight: float = 0.02) -> None:
        super().__init__()
        self.criterion = criterion
        self.task = get_task(task)
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.head_weight = float(head_weight)

    def forward(self, outputs: Tensor | tuple[Tensor, Tensor], teacher_logits: Tensor, targets: Tensor) -> Tensor:
        logits, head_logits = outputs if isinstance(outputs, tuple) else (outputs, None)
        loss = self.criterion(logits, targets)
        if self.weight:
            loss = loss + self.weight * kd_loss(logits, teacher_logits, self.temperature, self.task)
        if head_logits is not None and self.head_weight:
            loss = loss + self.head_weight * kd_loss(head_logits, teacher_logits, self.temperature, self.task)
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, weight={self.weight}, head_weight={self.head_weight}"


# --- shared classifiers ------------------------------------------------------------------------------


def _frozen_copy(module: nn.Module) -> nn.Module:
    frozen = copy.deepcopy(module).eval()
    for param in frozen.parameters():
        param.requires_grad_(False)
    return frozen


def classifier_of(model: nn.Module) -> nn.Module:
    """The part of ``model``'s head that another network's features can share: ``head.fc`` (a linear layer
    on the pooled features) or the whole ML-Decoder (queries, decoder and group classifier)."""
    head = getattr(model, "head", None)
    if isinstance(head, ClassifierHead) and isinstance(head.fc, nn.Linear):
        return head.fc
    if isinstance(head, MLDecoderHead):
        return head
    raise ConfigError(f"{type(model).__name__} has no classifier to share (features_only, or no classes)")


class ProjectedClassifier(nn.Module):
    """A frozen copy of a classifier (``nn.Linear`` or :class:`~tresnet.layers.MLDecoderHead`) behind a
    learned linear projection from ``in_features`` (an identity when the widths agree).

    ``forward(x)``: pooled features ``(N, in_features)`` for a linear classifier; a feature map
    ``(N, in_features, H, W)`` or tokens for an ML-Decoder. The copy stays in eval mode (no dropout) and
    receives no gradient; the projection learns.
    """

    def __init__(self, classifier: nn.Module, in_features: int) -> None:
        super().__init__()
        self.classifier = _frozen_copy(classifier)
        width = classifier.in_features  # nn.Linear and MLDecoderHead both name it so
        self.projection = nn.Linear(in_features, width) if in_features != width else nn.Identity()
        self.in_features = in_features
        param = next(self.classifier.parameters())
        self.projection.to(device=param.device, dtype=param.dtype)

    @property
    def pooled(self) -> bool:
        """True when the classifier takes pooled features (a linear layer), False for a feature map."""
        return isinstance(self.classifier, nn.Linear)

    def train(self, mode: bool = True) -> ProjectedClassifier:
        super().train(mode)
        self.classifier.eval()
        return self

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.pooled:
            return self.classifier(self.projection(x))
        if x.dim() == 4:
            x = x.flatten(2).transpose(1, 2)
        return self.classifier(self.projection(x), pre_logits=pre_logits)


def folded(module: ProjectedClassifier) -> nn.Module:
    """The classifier of ``module`` with its projection folded in (exact: two affine maps make one), as
    an ordinary ``nn.Linear`` or ML-Decoder of width ``module.in_features``."""
    classifier = copy.deepcopy(module.classifier)
    for param in classifier.parameters():
        param.requires_grad_(True)
    projection = module.projection
    if isinstance(projection, nn.Identity):
        return classifier
    first = classifier if isinstance(classifier, nn.Linear) else classifier.decoder.embed_standart
    with torch.no_grad():
        weight = first.weight.double() @ projection.weight.double()
        bias = first.weight.double() @ projection.bias.double() + first.bias.double()
    merged = nn.Linear(projection.in_features, first.out_features).to(first.weight)
    with torch.no_grad():
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
    if isinstance(classifier, nn.Linear):
        return merged
    classifier.decoder.embed_standart = merged
    classifier.in_features = projection.in_features
    return classifier


def ordinary_model(model: nn.Module) -> nn.Module:
    """``model`` itself, or a copy of it with every :class:`ProjectedClassifier` folded (:func:`folded`):
    what a checkpoint of a teacher trained with a frozen head holds."""
    if not any(isinstance(m, ProjectedClassifier) for m in model.modules()):
        return model
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, ProjectedClassifier):
            parent_name, _, attr = name.rpartition(".")
            setattr(plain.get_submodule(parent_name) if parent_name else plain, attr, folded(module))
    return plain


def install_frozen_head(model: nn.Module, source: nn.Module) -> ProjectedClassifier:
    """sh-kd: replace ``model``'s classifier with a frozen copy of ``source``'s (behind a projection when the
    widths differ); returns the installed module. Both must have heads of one kind and as many classes."""
    theirs, ours = classifier_of(source), classifier_of(model)
    if isinstance(theirs, nn.Linear) != isinstance(ours, nn.Linear):
        kind = "fc" if isinstance(theirs, nn.Linear) else "ml_decoder"
        raise ConfigError(f"the frozen head is an {kind!r} head: train with --head {kind}")
    shared = ProjectedClassifier(theirs, model.num_features)
    if isinstance(ours, nn.Linear):
        model.head.fc = shared
    else:
        model.head = shared
    return shared


def projected_classifier_like(state: dict, prefix: str = "") -> ProjectedClassifier:
    """An untrained :class:`ProjectedClassifier` shaped as the one whose state dict ``state`` holds under
    ``prefix``: the skeleton that a resumed run loads its saved head into."""
    projection = state.get(f"{prefix}projection.weight")
    if f"{prefix}classifier.weight" in state:
        out_features, width = state[f"{prefix}classifier.weight"].shape
        classifier = nn.Linear(width, out_features)
    else:
        options = ml_decoder_options(state, prefix=f"{prefix}classifier.")
        width = state[f"{prefix}classifier.decoder.embed_standart.weight"].shape[1]
        classifier = MLDecoderHead(width, options.pop("num_classes"), **options)
    return ProjectedClassifier(classifier, projection.shape[1] if projection is not None else width)


def saved_frozen_head_kind(state: dict) -> str | None:
    """The head kind (``"fc"``, ``"ml_decoder"``) of the frozen head a saved model state holds, None without."""
    if any(key.startswith("head.fc.classifier.") for key in state):
        return "fc"
    if any(key.startswith("head.classifier.") for key in state):
        return "ml_decoder"
    return None


def install_saved_frozen_head(model: nn.Module, state: dict) -> ProjectedClassifier | None:
    """Give ``model`` the shape of the frozen head (if any) that the saved state ``state`` of a model of
    its kind holds, so that the state loads into it; the installed module, or None when it holds none."""
    kind = saved_frozen_head_kind(state)
    if kind is None:
        return None
    device = next(model.parameters()).device
    if kind == "fc":
        model.head.fc = projected_classifier_like(state, "head.fc.").to(device)
        return model.head.fc
    model.head = projected_classifier_like(state, "head.").to(device)
    return model.head


def frozen_head_source(path: str | Path, class_names: list[str], task: str | None = None) -> nn.Module:
    """sh-kd: the student model of checkpoint ``path`` whose classifier a teacher is trained with, checked to
    classify ``class_names`` (and, given ``task``, to be trained for it). Raises :class:`CheckpointError` for a
    missing or unreadable file and :class:`ConfigError` for another task, other classes or a file that names
    no model."""
    path = check_teacher_file(path, "student checkpoint (--frozen-head-from)")
    student = create_model(checkpoint_path=path)
    if task is not None:
        check_loaded_task(student, task, "student checkpoint")
    check_loaded_classes(student, class_names, "student checkpoint")
    return student


class StudentWithTeacherHead(nn.Module):
    """th-kd's student: ``forward(x)`` gives ``(logits, teacher_head_logits)``, the second from the frozen
    teacher classifier (:class:`ProjectedClassifier`) on the student's pooled features or feature map."""

    def __init__(self, student: nn.Module, teacher_head: ProjectedClassifier) -> None:
        super().__init__()
        self.student = student
        self.teacher_head = teacher_head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.student.forward_features(x)
        logits = self.student.forward_head(features)
        shared = features.mean((2, 3)) if self.teacher_head.pooled else features
        return logits, self.teacher_head(shared)


class BlendedStudent(nn.Module):
    """The paper's inference blend ``p = (1 - w) p_student + w p_teacher_head`` as logits that evaluation
    reads: ``log p`` (multiclass; softmax probabilities) or ``logit(p)`` (multilabel; sigmoids)."""

    def __init__(self, student: StudentWithTeacherHead, weight: float, task: str | Task) -> None:
        super().__init__()
        self.net = student
        self.weight = float(weight)
        self.task = get_task(task)

    def forward(self, x: Tensor) -> Tensor:
        logits, head_logits = self.net(x)
        task = self.task
        p = (1 - self.weight) * task.probabilities(logits) + self.weight * task.probabilities(head_logits)
        return task.logits_of(p)


# --- the teacher -------------------------------------------------------------------------------------


class FrozenTeacher(nn.Module):
    """A teacher that takes the student's inputs: it re-normalises them from the student's normalisation to
    its own (the same pixels), runs in eval mode without gradients, and never leaves eval mode."""

    def __init__(self, teacher: nn.Module, student_norm: Normalisation, teacher_norm: Normalisation) -> None:
        super().__init__()
        self.model = teacher.eval().requires_grad_(False)
        scale, shift = _renormalisation(student_norm, teacher_norm)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    @property
    def renormalises(self) -> bool:
        """Whether the teacher's normalisation differs from the student's."""
        return self.scale is not None

    def train(self, mode: bool = True) -> FrozenTeacher:
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if self.renormalises:
            x = x * self.scale.to(x) + self.shift.to(x)  # x's device and type: the buffers stay where built
        return self.model(x)


def _renormalisation(source: Normalisation, target: Normalisation) -> tuple[Tensor | None, Tensor | None]:
    """``(scale, shift)`` of shape (1, 3, 1, 1) taking inputs normalised as ``source`` to ``target``
    (``pixel = x std_s + mean_s``, ``x_t = (pixel - mean_t) / std_t``); ``(None, None)`` when they agree."""
    if source == target:
        return None, None
    mean_s, std_s = (torch.tensor(v, dtype=torch.float64) for v in (source or ((0.0,) * 3, (1.0,) * 3)))
    mean_t, std_t = (torch.tensor(v, dtype=torch.float64) for v in (target or ((0.0,) * 3, (1.0,) * 3)))
    scale = (std_s / std_t).float().view(1, -1, 1, 1)
    shift = ((mean_s - mean_t) / std_t).float().view(1, -1, 1, 1)
    return scale, shift


def check_teacher_file(path: str | Path, what: str = "teacher checkpoint") -> Path:
    """``path`` as a Path when it is a file; a one-line :class:`CheckpointError` otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist{' (it is a folder)' if path.is_dir() else ''}: "
                              f"pass a weights file")
    return path


def check_classes(metadata: dict, class_names: list[str], path: str | Path, role: str) -> None:
    """A :class:`ConfigError` when the checkpoint described by ``metadata`` does not classify the training
    data's classes: another count, or (when it records them) other names or another order."""
    count = metadata.get("num_classes")
    if count is not None and int(count) != len(class_names):
        raise ConfigError(f"{role} {path} has {count} classes, the training data {len(class_names)}: "
                          f"the {role.split()[0]} must be trained on the same classes")
    held = metadata.get("class_names")
    if held and list(held) != list(class_names):
        first = next((i for i, (a, b) in enumerate(zip(held, class_names, strict=False)) if a != b),
                     min(len(held), len(class_names)))
        have = held[first] if first < len(held) else None
        want = class_names[first] if first < len(class_names) else None
        raise ConfigError(f"{role} {path} has other classes than the training data (class {first}: {have!r}, "
                          f"data: {want!r}): the {role.split()[0]} must be trained on the same classes, in the "
                          f"same order")


def check_loaded_task(model: nn.Module, task: str, role: str) -> None:
    """A one-line :class:`ConfigError` when the checkpoint ``model`` was just loaded from records another task
    than the run's ``task`` (a multi-label teacher for a multiclass student, or the reverse). A file that
    records no task (timm's, an official release) is taken as it is."""
    info = model.checkpoint_info
    held = info.metadata.get("task") if info is not None else None
    if held and held != task:
        raise ConfigError(f"{role} {info.path} is a {held} model and this run's task is {task}: the "
                          f"{role.split()[0]} must be trained for the same task (with --task {task})")


def check_loaded_classes(model: nn.Module, class_names: list[str], role: str) -> None:
    """:func:`check_classes` for a model just loaded by ``create_model`` (the file read once): the classes it
    was built with, and the names its checkpoint records."""
    info = model.checkpoint_info
    check_classes({**info.metadata, "num_classes": model.num_classes}, class_names, info.path, role)


def load_teacher(name: str | None, checkpoint: str | None, class_names: list[str],
                 task: str | None = None) -> nn.Module:
    """The teacher model ``name`` with the weights of ``checkpoint`` (any format; None: ``name``'s file
    in the local cache), checked to classify ``class_names`` (and, given ``task``, to be trained for it).

    Raises :class:`CheckpointError` (a missing file, weights of another architecture) and
    :class:`ConfigError` (another task, another class count or order, no name where the file names no model).
    """
    if checkpoint is not None:
        path = check_teacher_file(checkpoint)
    elif name is None:
        raise ConfigError("no teacher: pass --teacher-checkpoint FILE (and --teacher NAME when the file does not "
                          "name its model)")
    else:
        try:
            found = find_pretrained(name)
        except CheckpointError as e:
            raise CheckpointError(f"no --teacher-checkpoint: {e}") from None
        name, path = found.weights.model, found.path
    teacher = create_model(name, checkpoint_path=path)
    if task is not None:
        check_loaded_task(teacher, task, "teacher checkpoint")
    check_loaded_classes(teacher, class_names, "teacher checkpoint")
    return teacher


def teacher_from_state(name: str, state: dict) -> nn.Module:
    """A teacher ``name`` rebuilt from the state dict a resumed run saved (no file needed)."""
    options = ml_decoder_options(state)
    if options:
        classes = options.pop("num_classes")
        model = create_model(name, num_classes=classes, head="ml_decoder", head_options=options)
    else:
        model = create_model(name, num_classes=int(state["head.fc.weight"].shape[0]))
    model.load_state_dict(state)
    return model


# --- the run's distillation state --------------------------------------------------------------------


class Distiller:
    """What a distilled run adds to training: the frozen teacher, th-kd's teacher head and the loss. All of
    it is training-only state (:meth:`state_dict` goes to ``resume.pt``, never to the student's weights)."""

    def __init__(self, teacher: FrozenTeacher, teacher_name: str, criterion: DistillationLoss,
                 teacher_head: ProjectedClassifier | None = None, blend: float = 0.0) -> None:
        self.teacher = teacher
        self.teacher_name = teacher_name
        self.criterion = criterion
        self.teacher_head = teacher_head
        self.blend = float(blend)

    def student_net(self, model: nn.Module) -> nn.Module:
        """The module the optimiser trains: ``model``, or with th-kd ``model`` and the teacher head."""
        return StudentWithTeacherHead(model, self.teacher_head) if self.teacher_head is not None else model

    def loss(self, net: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        """The distillation loss of the student ``net`` (from :meth:`student_net`, or its DDP wrapper)."""
        outputs = net(inputs)
        return self.criterion(outputs, self.teacher(inputs), targets)

    def state_dict(self) -> dict:
        return {"teacher_model": self.teacher_name, "teacher": self.teacher.model.state_dict(),
                "teacher_head": self.teacher_head.state_dict() if self.teacher_head is not None else None}


def create_distiller(options: DistillationSection, task: str, class_names: list[str], student: nn.Module,
                     criterion: nn.Module, img_size: int, device: torch.device, *, channels_last: bool = False,
                     saved: dict | None = None) -> Distiller:
    """The :class:`Distiller` of a run's ``distillation`` section (with a ``method``) for ``student`` on ``device``
    (in channels-last memory format with ``channels_last``), for ``task``: the teacher from its checkpoint, or from
    the ``saved`` state of a resumed run. ``criterion`` is the run's own loss (cross-entropy, ASL...).

    Raises :class:`CheckpointError` and :class:`ConfigError` as :func:`load_teacher`, and
    :class:`~tresnet.errors.InputSizeError` for an image size the teacher cannot take.
    """
    if saved is not None:
        name, teacher = saved["teacher_model"], teacher_from_state(saved["teacher_model"], saved["teacher"])
    else:
        teacher = load_teacher(options.teacher, options.teacher_checkpoint, class_names, task)
        name = teacher.pretrained_cfg["model"]
    teacher.check_input_size(img_size, img_size)
    teacher.to(device)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    frozen = FrozenTeacher(teacher, normalisation(student.pretrained_cfg),
                           normalisation(teacher.pretrained_cfg)).to(device)  # its constants beside its weights
    head = None
    if options.method == "th-kd":
        head = ProjectedClassifier(classifier_of(teacher), student.num_features).to(device)
        if saved is not None:
            head.load_state_dict(saved["teacher_head"])
    loss = DistillationLoss(criterion, task=task, temperature=options.temperature, weight=options.weight,
                            head_weight=options.teacher_head_weight if head is not None else 0.0)
    return Distiller(frozen, name, loss, head, options.teacher_head_blend)


__all__ = ["BlendedStudent", "DistillationLoss", "Distiller", "create_distiller", "FrozenTeacher", "ProjectedClassifier", "StudentWithTeacherHead",
           "check_classes", "check_loaded_classes", "check_loaded_task", "check_teacher_file", "classifier_of", "folded", "frozen_head_source",
           "install_frozen_head", "install_saved_frozen_head", "kd_loss", "load_teacher", "ordinary_model",
           "projected_classifier_like", "saved_frozen_head_kind", "teacher_from_state"]
