"""Training configuration: one dataclass, recipes as YAML files, and the rules that merge them.

Every field of :class:`TrainConfig` is both a recipe key and a ``tresnet train`` option (``lr`` is
``--lr``, ``batch_size`` is ``--batch-size``). Precedence: the field's default < the recipe (a YAML
file, or a shipped recipe name; ``digits-demo`` when ``--data digits`` comes with no recipe) < options
given on the command line. A shipped recipe ``NAME`` may have a form for one model family,
``NAME-FAMILY`` (``finetune-genet``): naming ``NAME`` with a model of that family uses it. Fields whose
default is the model family's (``norm``) are filled in when the run starts (:func:`with_model_defaults`).
``--resume`` continues with the configuration saved in the output folder. The recipes and their sources
are described in the training guide (docs/train.md).

A key that moved (:data:`MOVED_KEYS`: ``amp`` and ``amp_dtype`` became ``precision``) fails with a one-line
:class:`ConfigError` that names its new place.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tresnet.data.bundled import bundled_set
from tresnet.data.sources import find_source
from tresnet.data.transforms import CROP_MODES
from tresnet.errors import ConfigError
from tresnet.files import write_text
from tresnet.layers import NORMS as LAYER_NORMS
from tresnet.models.registry import HEADS, family_of, resolve_norm
from tresnet.recipes import list_recipes, read_recipe, recipe_path
from tresnet.runtime import PRECISIONS
from tresnet.tasks import DEFAULT_TASK, DEFAULT_THRESHOLD, get_task
from tresnet.tasks.losses import REDUCTIONS

CONFIG_FILE = "config.yaml"  # the effective configuration, saved in the output folder

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("onecycle", "cosine", "constant")
AUTO_AUGMENTS = ("autoaugment", "randaugment")
ERASE_MODES = ("pixel", "const")
TRAIN_CROP_MODES = ("random", "squash")
DISTILL_METHODS = ("kd", "th-kd")
# The norms a run may choose; distributed runs switch in-place ABN to its synchronised form themselves.
NORMS = tuple(norm for norm in LAYER_NORMS if norm != "inplace_abn_sync")
# Keys of earlier versions and where their meaning lives now (read as an error that says so).
MOVED_KEYS = {"amp": "precision: amp (float16 with loss scaling on CUDA, bfloat16 on the CPU), fp16 or bf16",
              "amp_dtype": "precision: fp16 or bf16"}


def _opt(help_text: str, default: Any = None, *, choices: tuple | None = None, group: str = "",
         factory=None) -> Any:
    metadata = {"help": help_text, "choices": choices, "group": group}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a training run depends on; the recipes are described in the training guide (docs/train.md).

    """

    # --- run
    model: str = _opt("model name, e.g. tresnet_m, tresnet_l, tresnet_xl, tresnet_v2_l", "tresnet_m", group="run")
    task: str = _opt("a registered task: multiclass (one class per image) or multilabel (any set of classes per "
                     "image)", DEFAULT_TASK, group="run")
    data: str | None = _opt("ImageNet-style folder (train/ and val/, or class folders), 'digits' or "
                            "'digits-multilabel'; multilabel: an images folder with --annotations, or a labels CSV",
                            group="run")
    annotations: str | None = _opt("multilabel: COCO-format annotations of the --data images folder "
                                   "(instances_train2014.json)", group="run")
    val_data: str | None = _opt("validation images folder or labels CSV (default: carved out of --data)",
                                group="run")
    val_annotations: str | None = _opt("multilabel: COCO-format annotations of --val-data", group="run")
    classes: str | None = _opt("multilabel CSV: text file of the class names, one per line (default: the names "
                               "found in the CSV, sorted)", group="run")
    output: str | None = _opt("output folder: checkpoints, metrics, config, summary", group="run")
    resume: bool = _opt("continue the run saved in --output (with its saved configuration)", False, group="run")
    init_checkpoint: str | None = _opt(
        "start from these weights (official, timm or tresnet file); a new head when the classes differ",
        group="run")
    seed: int = _opt("random seed: weights, data order and augmentation derive from it", 0, group="run")
    device: str = _opt("'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'", "auto", group="run")
    deterministic: bool = _opt("use deterministic algorithms only (bit-exact resume; slower on GPU)", False,
                               group="run")
    workers: int | None = _opt("data loading processes per training process (default: min(8, CPUs))",
                               group="run")
    threads: int | None = _opt("CPU threads per process for the math (default: torch's; 1 can be much faster "
                               "on a busy machine)", group="run")
    progress: bool = _opt("show progress bars", True, group="run")
    log_interval: int = _opt("steps between progress updates and NaN checks", 10, group="run")
    # --- length and batch
    epochs: int = _opt("number of epochs", 100, group="schedule")
    batch_size: int = _opt("images per step and per process (global batch = this x processes)", 64,
                           group="schedule")
    max_steps_per_epoch: int | None = _opt("cap on the steps of an epoch (quick trials)", group="schedule")
    max_val_images: int | None = _opt("cap on the validation images evaluated each epoch", group="schedule")
    # --- optimiser and learning rate
    optimizer: str = _opt("optimiser", "adamw", choices=OPTIMIZERS, group="optimizer")
    lr: float = _opt("peak learning rate", 1e-3, group="optimizer")
    weight_decay: float = _opt("weight decay of conv and linear weights (never of norms and biases)", 1e-4,
                               group="optimizer")
    momentum: float = _opt("SGD momentum (one-cycle cycles it between 0.85 and 0.95)", 0.9,
                           group="optimizer")
    schedule: str = _opt("learning-rate schedule, stepped every optimiser step", "cosine", choices=SCHEDULES,
                         group="optimizer")
    schedule_epochs: int | None = _opt("length of the schedule in epochs when training stops before its end "
                                       "(default: epochs)", group="optimizer")
    warmup_epochs: float = _opt("cosine/constant: linear warm-up length in epochs", 0.0, group="optimizer")
    warmup_start_factor: float = _opt("cosine/constant: warm-up starts at lr x this", 0.01,
                                      group="optimizer")
    final_lr_factor: float = _opt("cosine: the last step's lr is lr x this", 0.0, group="optimizer")
    pct_start: float = _opt("one-cycle: fraction of the steps spent rising to lr", 0.2, group="optimizer")
    div_factor: float = _opt("one-cycle: the first lr is lr / this", 25.0, group="optimizer")
    final_div_factor: float = _opt("one-cycle: the last lr is lr / div_factor / this", 1e4, group="optimizer")
    clip_grad: float | None = _opt("clip the gradient norm to this (none by default)", group="optimizer")
    loss: str | None = _opt("loss: the task's (multiclass: ce; multilabel: asl (default), bce or focal)",
                            group="optimizer")
    loss_reduction: str = _opt("multilabel losses: mean over every (image, class) pair, or the sum (the "
                               "official ASL's)", "mean", choices=REDUCTIONS, group="optimizer")
    asl_gamma_neg: float = _opt("ASL: focusing exponent of the negatives", 4.0, group="optimizer")
    asl_gamma_pos: float = _opt("ASL: focusing exponent of the positives", 0.0, group="optimizer")
    asl_clip: float = _opt("ASL: probability margin shifted off the negatives", 0.05, group="optimizer")
    focal_gamma: float = _opt("focal loss: focusing exponent", 2.0, group="optimizer")
    label_smoothing: float = _opt("label smoothing of the cross-entropy (multiclass)", 0.1, group="optimizer")
    ema_decay: float = _opt("decay per step of the weights' moving average (0: no EMA)", 0.0,
                            group="optimizer")
    ema_warmup: bool = _opt("EMA: decay min(ema_decay, (1 + n) / (10 + n)) at update n (short runs)", False,
                            group="optimizer")
    # --- model options
    img_size: int | None = _opt("training and validation image side (default: the model's)", group="model")
    head: str | None = _opt("classifier head: fc (pooling + linear) or ml_decoder (ML-Decoder) (default: the "
                            "--init-checkpoint's, else fc)", choices=HEADS, group="model")
    drop_path: float = _opt("stochastic depth rate of the last block", 0.0, group="model")
    drop_rate: float = _opt("dropout before the classifier", 0.0, group="model")
    norm: str | None = _opt("norm layers: in-place ABN (TResNet's) or plain BatchNorm (default: the model "
                            "family's: inplace_abn for TResNet, bn for GENet)", choices=NORMS, group="model")
    sync_bn: bool = _opt("distributed: synchronise norm statistics across processes (plain BN: on GPUs only)",
                         True, group="model")
    precision: str = _opt("autocast precision; amp is float16 with loss scaling on CUDA, bfloat16 on the CPU",
                          "fp32", choices=PRECISIONS, group="model")
    channels_last: bool = _opt("channels-last memory format for weights and inputs", False, group="model")
    # --- data and augmentation
    val_split: float = _opt("fraction of train carved out as validation when there is no val folder", 0.1,
                            group="data")
    split_seed: int = _opt("seed of that split (fixed so that --seed does not change the val set)", 0,
                           group="data")
    threshold: float = _opt("multilabel: a label is predicted above this probability (CP/CR/CF1/OP/OR/OF1)",
                            DEFAULT_THRESHOLD, group="data")
    train_crop_mode: str = _opt("training crop: random-resized crop, or squash the whole image to the size "
                                "(multilabel recipes: no object cut away)", "random", choices=TRAIN_CROP_MODES,
                                group="data")
    scale: tuple[float, float] = _opt("random-resized-crop area range", group="data",
                                      factory=lambda: (0.08, 1.0))
    ratio: tuple[float, float] = _opt("random-resized-crop aspect range", group="data",
                                      factory=lambda: (3 / 4, 4 / 3))
    hflip: float = _opt("horizontal flip probability", 0.5, group="data")
    auto_augment: str | None = _opt("AutoAugment (ImageNet policy) or RandAugment", choices=AUTO_AUGMENTS,
                                    group="data")
    randaugment_magnitude: int = _opt("RandAugment magnitude (0-30)", 9, group="data")
    randaugment_ops: int = _opt("RandAugment operations per image", 2, group="data")
    random_erase: float = _opt("random erasing (Cutout) probability", 0.0, group="data")
    random_erase_mode: str = _opt("fill erased boxes with per-pixel noise or zeros", "pixel",
                                  choices=ERASE_MODES, group="data")
    cutout: float = _opt("Cutout as in ASL: a box of this fraction of the height and width, at a random centre, "
                         "filled with one random colour, on every image (0: off)", 0.0, group="data")
    mixup: float = _opt("mixup alpha (0: off)", 0.0, group="data")
    cutmix: float = _opt("cutmix alpha (0: off)", 0.0, group="data")
    mix_prob: float = _opt("probability of mixing a batch when mixup or cutmix is on", 1.0, group="data")
    crop_pct: float | None = _opt("validation: centre-crop fraction (default: the model's)", group="data")
    crop_mode: str | None = _opt("validation: 'center' crop or 'squash' the whole image (default: the model's)",
                                 choices=CROP_MODES, group="data")
    # --- distillation (Ben-Baruch et al., "It's All in the Head", arXiv 2201.06945; docs/distill.md)
    distill: str | None = _opt("distil from --teacher: kd (softened logits) or th-kd (kd plus the teacher's "
                               "classifier, frozen, on the student's features)", choices=DISTILL_METHODS,
                               group="distill")
    teacher: str | None = _opt("teacher model name (default: the model --teacher-checkpoint names)",
                               group="distill")
    teacher_checkpoint: str | None = _opt("teacher weights (official, timm or tresnet file; default: --teacher's "
                                          "file in the local cache)", group="distill")
    distill_weight: float = _opt("weight of the KL term between the teacher's and the student's softened "
                                 "logits (the cross-entropy's weight is 1)", 1.0, group="distill")
    distill_temperature: float = _opt("temperature T of the softened logits (the KL terms are scaled by T^2)",
                                      4.0, group="distill")
    teacher_head_weight: float = _opt("th-kd: weight of the KL term between the teacher's logits and those of "
                                      "its frozen classifier on the student's features (0.02: the TH-KD example "
                                      "of the paper's code)", 0.02, group="distill")
    teacher_head_blend: float = _opt("th-kd: weight w of the teacher-head prediction in the blend "
                                     "(1 - w) p_student + w p_teacher_head, reported beside the student's own "
                                     "score at each validation (0: not reported)", 0.0, group="distill")
    frozen_head_from: str | None = _opt("sh-kd step 2: train this model with the classifier of this student "
                                        "checkpoint copied in and frozen (a learned projection when widths "
                                        "differ)", group="distill")
    def validate(self) -> TrainConfig:
        """Check required values, choices and ranges; raise :class:`ConfigError` naming the bad one."""
        _check_required(self)
        _check_choices(self)
        _check_model_and_norm(self)
        _check_task(self)
        _check_signs(self)
        _check_intervals(self)
        _check_augmentation_and_schedule(self)
        _check_distillation(self)
        return self

    def to_dict(self) -> dict:
        """Plain values (tuples as lists) in field order, as saved in ``config.yaml``."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# --- validation steps --------------------------------------------------------------------------------


def _nothing_to_resume(output: str) -> ConfigError:
    """``--resume`` without ``--data`` where no run was saved: nothing to continue, nothing to start."""
    folder = Path(output).expanduser()
    found = f"no {CONFIG_FILE}, no resume.pt" if folder.exists() else "the folder does not exist"
    return ConfigError(f"--resume: nothing to resume in {folder} ({found}): point --output at the folder of the "
                       f"run to continue, or drop --resume and pass --data DIR to start a new run")


def _check_required(cfg: TrainConfig) -> None:
    if not cfg.data and cfg.resume and cfg.output:
        raise _nothing_to_resume(cfg.output)
    if not cfg.data:
        raise ConfigError("no training data: pass --data DIR (ImageNet-style folders), --data digits, or for "
                          "--task multilabel --data digits-multilabel, an images folder with --annotations FILE "
                          "or a labels CSV")
    if not cfg.output:
        raise ConfigError("no output folder: pass --output DIR")


def _check_choices(cfg: TrainConfig) -> None:
    for f in dataclasses.fields(cfg):
        choices, value = f.metadata.get("choices"), getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")


def _check_model_and_norm(cfg: TrainConfig) -> None:
    """An unknown model raises :class:`~tresnet.errors.ModelNotFoundError`; a norm its family lacks
    (In-Place ABN with a GENet) a one-line :class:`ConfigError`."""
    family = family_of(cfg.model)
    if cfg.norm is not None and cfg.norm not in family.norms:
        raise ConfigError(f"norm {cfg.norm!r} is not available for {cfg.model} ({family.title} norms: "
                          f"{', '.join(family.norms)}): leave norm out for the family's default, or pass "
                          f"--norm {family.norms[0]}")


def _check_task(cfg: TrainConfig) -> None:
    """The data and the loss fit the task, and the data source reads the options given (:class:`ConfigError`
    otherwise)."""
    task = get_task(cfg.task)
    if cfg.data is not None:
        find_source(cfg.data, task.name, cfg.annotations).check(cfg)
    task.check_loss(cfg.loss)
    if cfg.val_annotations and not cfg.val_data:
        raise ConfigError("--val-annotations describes --val-data: pass the validation images folder too")


def with_model_defaults(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the values that default to the model family's filled in (``norm``): what a run saves
    in ``config.yaml`` and compares when resumed."""
    return dataclasses.replace(cfg, norm=resolve_norm(family_of(cfg.model), cfg.norm))


def _optional_values(cfg: TrainConfig, names: tuple[str, ...]) -> dict:
    return {name: getattr(cfg, name) for name in names if getattr(cfg, name) is not None}


def _check_signs(cfg: TrainConfig) -> None:
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "log_interval": cfg.log_interval,
                **_optional_values(cfg, ("max_steps_per_epoch", "max_val_images", "img_size", "clip_grad",
                                         "threads", "schedule_epochs"))}
    for name, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    non_negative = {"weight_decay": cfg.weight_decay, "momentum": cfg.momentum, "seed": cfg.seed,
                    "split_seed": cfg.split_seed, "warmup_epochs": cfg.warmup_epochs, "mixup": cfg.mixup,
                    "cutmix": cfg.cutmix, "randaugment_ops": cfg.randaugment_ops,
                    "final_lr_factor": cfg.final_lr_factor, "asl_gamma_neg": cfg.asl_gamma_neg,
                    "asl_gamma_pos": cfg.asl_gamma_pos, "focal_gamma": cfg.focal_gamma,
                    **_optional_values(cfg, ("workers",))}
    for name, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{name} must be 0 or more, got {value}")


def _check_intervals(cfg: TrainConfig) -> None:
    fractions = {"label_smoothing": cfg.label_smoothing, "ema_decay": cfg.ema_decay, "drop_path": cfg.drop_path,
                 "drop_rate": cfg.drop_rate, "hflip": cfg.hflip, "random_erase": cfg.random_erase,
                 "mix_prob": cfg.mix_prob, "asl_clip": cfg.asl_clip, "cutout": cfg.cutout}
    half_open = ("label_smoothing", "ema_decay", "drop_rate", "asl_clip", "cutout")
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0 or (name in half_open and value == 1.0):
            raise ConfigError(f"{name} must lie in [0, 1), got {value}")
    for name, value in {"val_split": cfg.val_split, "pct_start": cfg.pct_start, "threshold": cfg.threshold}.items():
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{name} must lie in (0, 1), got {value}")
    if not 0.0 < cfg.warmup_start_factor <= 1.0:
        raise ConfigError(f"warmup_start_factor must lie in (0, 1], got {cfg.warmup_start_factor}")
    if cfg.crop_pct is not None and not 0.0 < cfg.crop_pct <= 1.0:
        raise ConfigError(f"crop_pct must lie in (0, 1], got {cfg.crop_pct}")


def _check_augmentation_and_schedule(cfg: TrainConfig) -> None:
    for name in ("scale", "ratio"):
        low, high = getattr(cfg, name)
        if not 0 < low <= high or (name == "scale" and high > 1.0):
            raise ConfigError(f"{name} must be two increasing positive numbers"
                              f"{' up to 1' if name == 'scale' else ''}, got {[low, high]}")
    if not 0 <= cfg.randaugment_magnitude <= 30:
        raise ConfigError(f"randaugment_magnitude must lie in 0..30, got {cfg.randaugment_magnitude}")
    if cfg.div_factor < 1 or cfg.final_div_factor < 1:
        raise ConfigError(f"div_factor and final_div_factor must be at least 1, got {cfg.div_factor}, "
                          f"{cfg.final_div_factor}")
    if not math.isfinite(cfg.lr):
        raise ConfigError(f"lr must be finite, got {cfg.lr}")
    if cfg.schedule_epochs is not None and cfg.schedule_epochs < cfg.epochs:
        raise ConfigError(f"schedule_epochs ({cfg.schedule_epochs}) is the schedule's length: it must be at least "
                          f"epochs ({cfg.epochs})")


def _check_distillation(cfg: TrainConfig) -> None:
    """The distillation options go together: a method with a teacher, th-kd's options with th-kd, a frozen
    head without a teacher (sh-kd trains the teacher on the labels)."""
    has_teacher = cfg.teacher is not None or cfg.teacher_checkpoint is not None
    if cfg.distill is not None and not has_teacher:
        raise ConfigError(f"--distill {cfg.distill} needs a teacher: pass --teacher-checkpoint FILE (and --teacher "
                          f"NAME when the file does not name its model)")
    if has_teacher and cfg.distill is None:
        raise ConfigError("a teacher is given but no method: pass --distill kd or --distill th-kd")
    if cfg.frozen_head_from is not None and cfg.distill is not None:
        raise ConfigError("--frozen-head-from trains a teacher for sh-kd on the labels: drop --distill and the "
                          "teacher options, then distil the student from that teacher in a second run")
    if not cfg.distill_temperature > 0:
        raise ConfigError(f"distill_temperature must be positive, got {cfg.distill_temperature}")
    for name in ("distill_weight", "teacher_head_weight"):
        if not getattr(cfg, name) >= 0:
            raise ConfigError(f"{name} must be 0 or more, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.teacher_head_blend <= 1.0:
        raise ConfigError(f"teacher_head_blend must lie in [0, 1], got {cfg.teacher_head_blend}")
    if cfg.teacher_head_blend > 0 and cfg.distill != "th-kd":
        raise ConfigError("teacher_head_blend blends in the teacher head of th-kd: pass --distill th-kd, or "
                          "leave it at 0")


# --- fields: names, types, coercion ----------------------------------------------------------------

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)
# Options that may differ when a run is resumed: they change how it runs, not what it computes.
RESUME_FREE = frozenset({"resume", "output", "device", "workers", "threads", "progress", "log_interval"})
_NONE_WORDS = ("none", "null")
_TRUE_WORDS, _FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0")


def field_type(name: str) -> tuple[type, bool]:
    """``(base type, optional)`` of a config field: ``int``, ``float``, ``bool``, ``str`` or ``tuple``."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    return (tuple if origin is tuple else hint), optional


def _unknown_key_error(key: str, where: str) -> ConfigError:
    if key in MOVED_KEYS:
        return ConfigError(f"{key!r} in {where} is now {MOVED_KEYS[key]}")
    close = difflib.get_close_matches(key, list(FIELDS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {key!r} in {where}{hint}; valid keys: {', '.join(FIELDS)}")


# Converters of one base type: each returns the converted value or raises ValueError / TypeError.
def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE_WORDS + _FALSE_WORDS:
        return value.lower() in _TRUE_WORDS
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(value)
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def _to_pair(value: Any) -> tuple[float, float]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(value)
    return tuple(float(v) for v in value)


def _to_str(value: Any, choices: tuple | None) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not choices:
        return str(value)
    raise ValueError(value)


_CONVERTERS = {bool: _to_bool, int: _to_int, float: _to_float, tuple: _to_pair}


def coerce_value(name: str, value: Any, where: str = "the configuration") -> Any:
    """``value`` checked and converted to the type of field ``name``; :class:`ConfigError` if it cannot be."""
    if name not in FIELDS:
        raise _unknown_key_error(name, where)
    base, optional = field_type(name)
    choices = FIELDS[name].metadata.get("choices")
    none_word = isinstance(value, str) and value.lower() in _NONE_WORDS
    if value is None or (none_word and (base is not str or (optional and choices))):
        if optional:
            return None
        raise ConfigError(f"{name} in {where} must be {_describe(base, optional, choices)}, got {value!r}")
    try:
        coerced = _to_str(value, choices) if base is str else _CONVERTERS[base](value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} in {where} must be {_describe(base, optional, choices)}, "
                          f"got {value!r}") from None
    if choices and coerced not in choices:
        raise ConfigError(f"{name} in {where} must be one of {', '.join(choices)}"
                          f"{' (or none)' if optional else ''}, got {value!r}")
    return coerced


def _describe(base: type, optional: bool, choices) -> str:
    if choices:
        text = "one of " + ", ".join(choices)
    else:
        text = {bool: "true or false", int: "an integer", float: "a number", tuple: "two numbers",
                str: "a string"}[base]
    return text + (" (or none)" if optional else "")


def coerce_values(raw: Mapping[str, Any], where: str = "the configuration") -> dict:
    """Every value of ``raw`` checked and converted (keys may use ``-`` or ``_``). Raises :class:`ConfigError` as
    :func:`coerce_value` (a moved key names its new place)."""
    values = {str(key).replace("-", "_"): value for key, value in raw.items()}
    return {name: coerce_value(name, value, where) for name, value in values.items()}


# --- recipes -----------------------------------------------------------------------------------------


def recipe_for_model(name_or_path: str | Path, model: str) -> str | Path:
    """The recipe a run of ``model`` uses when ``name_or_path`` is asked for: the family form
    ``NAME-FAMILY`` of a shipped recipe ``NAME`` when it is shipped (``finetune`` -> ``finetune-genet``
    for a GENet), else ``name_or_path`` as it is (files, family forms, recipes one family serves)."""
    name = str(name_or_path)
    name = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if Path(name_or_path).expanduser().is_file() or "/" in name or name not in list_recipes():
        return name_or_path
    family = family_of(model).name
    form = f"{name}-{family}"
    return form if form in list_recipes() else name_or_path


def load_recipe(name_or_path: str | Path) -> dict:
    """The checked values of a recipe (keys may use ``-`` or ``_``): :func:`tresnet.recipes.read_recipe`
    coerced to the configuration's types; :class:`ConfigError` for an unknown key, a bad value or a file that is
    not a YAML mapping."""
    return coerce_values(read_recipe(name_or_path), f"recipe {recipe_path(name_or_path)}")


# --- resuming ----------------------------------------------------------------------------------------


def saved_config(output: str | Path) -> dict | None:
    """The configuration saved in the run folder ``output`` (its ``config.yaml``), or None if there is none."""
    path = Path(output).expanduser() / CONFIG_FILE
    if not path.is_file():
        return None
    return load_recipe(path)


def check_resume(given: Mapping[str, Any], saved: Mapping[str, Any], output: str | Path) -> None:
    """Raise :class:`ConfigError` naming every setting of ``given`` that differs from the ``saved``
    configuration of the run in ``output`` (those in :data:`RESUME_FREE` may differ)."""
    conflicts = [k for k in given if k not in RESUME_FREE and k in saved and _plain(saved[k]) != _plain(given[k])]
    if conflicts:
        details = ", ".join(f"{k} (saved {_plain(saved[k])!r}, given {_plain(given[k])!r})" for k in conflicts)
        raise ConfigError(f"--resume continues the run in {output} with its saved configuration, and these "
                          f"settings differ: {details}; drop them, or start a new run in another --output")


def run_recipe(recipe: str | Path | None, overrides: Mapping[str, Any]) -> str | Path | None:
    """The recipe a run given ``recipe`` and the options ``overrides`` uses: the demo recipe of an embedded
    data set without one (``digits-demo``, ``digits-multilabel-demo``), and the family form of a shipped recipe (:func:`recipe_for_model`)
    for the model of the options (else of the recipe, else the default ``tresnet_m``)."""
    bundled = bundled_set(overrides.get("data") or "")
    if recipe is None and bundled is not None:  # a run on a bundled set uses its demo recipe when none is named
        recipe = bundled.recipe
    if recipe is None:
        return None
    model = overrides.get("model") or load_recipe(recipe).get("model") or FIELDS["model"].default
    return recipe_for_model(recipe, model)


def build_config(recipe: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """The effective configuration of a run: defaults < ``recipe`` < ``overrides``.

    ``--data digits`` with no recipe uses the ``digits-demo`` recipe; a shipped recipe with a form for
    the model's family (``NAME-FAMILY``, e.g. ``finetune-genet``) is used in that form
    (:func:`run_recipe`). With ``resume`` and a ``config.yaml`` in the output folder, that saved
    configuration is the base, and a recipe or option that contradicts it raises :class:`ConfigError`
    (a resumed run must compute what it started).
    """
    overrides = coerce_values(overrides or {}, "the options")
    recipe = run_recipe(recipe, overrides)
    values = {**(load_recipe(recipe) if recipe is not None else {}), **overrides}
    output = values.get("output")
    saved = saved_config(output) if values.get("resume") and output else None
    if saved is not None:
        check_resume(values, saved, output)
        values = {**saved, **{k: v for k, v in values.items() if k in RESUME_FREE}}
    return TrainConfig(**values).validate()


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (the file :func:`load_recipe` reads back), atomically."""
    text = "# effective configuration of this run (tresnet train); reusable with --config\n"
    write_text(path, text + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = ["CONFIG_FILE", "DISTILL_METHODS", "FIELDS", "MOVED_KEYS", "NORMS", "RESUME_FREE", "TrainConfig",
           "build_config", "check_resume", "coerce_value", "coerce_values", "field_type",
           "load_recipe", "recipe_for_model", "run_recipe", "save_config", "saved_config",
           "with_model_defaults"]
