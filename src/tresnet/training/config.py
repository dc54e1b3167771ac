"""Training configuration: sections (:mod:`tresnet.training.sections`), recipes as YAML files, and the rules that
merge them.

A recipe is a YAML mapping of sections, each a mapping of its keys::

    model:
      img_size: 224
    optimisation:
      lr: 2.0e-4
      epochs: 40

Every key is also a ``tresnet train`` option (``optimisation.lr`` is ``--lr``, ``model.name`` is ``--model``):
:data:`OPTIONS` maps each option to its place. Precedence: the field's default < the recipe (a YAML file, or a
shipped recipe name; a bundled data set's demo recipe when it comes with none) < options given on the command
line. A shipped recipe ``NAME`` may have a form for one model family, ``NAME-FAMILY`` (``finetune-genet``):
naming ``NAME`` with a model of that family uses it. Fields whose default is the model family's (``norm``) are
filled in when the run starts (:func:`with_model_defaults`). ``--resume`` continues with the configuration saved
in the output folder. The recipes and their sources are described in the training guide (docs/train.md).

A key of an earlier version fails with a one-line :class:`ConfigError` that names its new place: a key outside its
section (``lr:`` at the top of a recipe is ``optimisation: {lr: ...}``), a key renamed in its section
(``loss_reduction`` is ``loss.reduction``), and the keys of :data:`MOVED_KEYS` (``amp`` is ``run.precision``).
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
from tresnet.errors import ConfigError
from tresnet.files import write_text
from tresnet.models.registry import family_of, resolve_norm
from tresnet.recipes import list_recipes, read_recipe, recipe_path
from tresnet.tasks import get_task, list_tasks
from tresnet.training.sections import (
    SECTIONS,
    AugmentationSection,
    DataSection,
    DetectionSection,
    DistillationSection,
    LossSection,
    ModelSection,
    OptimisationSection,
    RunSection,
    TaskSection,
)

CONFIG_FILE = "config.yaml"  # the effective configuration, saved in the output folder
# Keys of earlier versions whose meaning moved to another option (read as an error that says so).
MOVED_KEYS = {"amp": "run.precision (--precision): amp (float16 with loss scaling on CUDA, bfloat16 on the CPU), "
                     "fp16 or bf16",
              "amp_dtype": "run.precision (--precision): fp16 or bf16"}


@dataclass
class TrainConfig:
    """Everything a training run depends on, in sections (:mod:`tresnet.training.sections`), each read by the part
    of the run that owns it; the recipes are described in the training guide (docs/train.md)."""

    task: TaskSection = field(default_factory=TaskSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augmentation: AugmentationSection = field(default_factory=AugmentationSection)
    optimisation: OptimisationSection = field(default_factory=OptimisationSection)
    loss: LossSection = field(default_factory=LossSection)
    detection: DetectionSection = field(default_factory=DetectionSection)
    distillation: DistillationSection = field(default_factory=DistillationSection)
    run: RunSection = field(default_factory=RunSection)

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The configuration with ``values`` (keyed by option name, :data:`OPTIONS`) in their sections and the
        defaults elsewhere; :class:`ConfigError` for an unknown option. Values are not checked: see
        :meth:`validate`."""
        by_section: dict[str, dict] = {name: {} for name in SECTIONS}
        for key, value in values.items():
            if key not in OPTIONS:
                raise _unknown_key_error(key, "the options")
            option = OPTIONS[key]
            by_section[option.section][option.name] = value
        return cls(**{name: SECTIONS[name](**fields) for name, fields in by_section.items()})

    def value(self, option: str) -> Any:
        """The value of ``option`` (an :data:`OPTIONS` name: ``"lr"`` is ``self.optimisation.lr``)."""
        place = OPTIONS[option]
        return getattr(getattr(self, place.section), place.name)

    def options(self) -> dict:
        """Every value keyed by its option name, plain (tuples as lists): what resuming compares."""
        return {option: _plain(self.value(option)) for option in OPTIONS}

    def to_dict(self) -> dict:
        """Plain values (tuples as lists) in sections, as saved in ``config.yaml`` (a recipe)."""
        return {name: {f.name: _plain(getattr(getattr(self, name), f.name))
                       for f in dataclasses.fields(SECTIONS[name])} for name in SECTIONS}

    def validate(self) -> TrainConfig:
        """Check required values, choices and ranges; raise :class:`ConfigError` naming the bad one."""
        _check_config(self)
        return self


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def with_model_defaults(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the values that default to the model family's filled in (``norm``): what a run saves
    in ``config.yaml`` and compares when resumed."""
    norm = resolve_norm(family_of(cfg.model.name), cfg.model.norm)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, norm=norm))


# --- options: names, places, types, coercion --------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option: its section, its field's name there, and the field (help, choices, default)."""

    section: str
    name: str
    field: dataclasses.Field

    @property
    def place(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def help(self) -> str:
        return self.field.metadata["help"]

    @property
    def choices(self) -> tuple | None:
        return self.field.metadata["choices"]

    @property
    def default(self) -> Any:
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return self.field.default


def _options() -> dict[str, Option]:
    options: dict[str, Option] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            option = f.metadata["option"] or f.name
            if option in options:
                raise RuntimeError(f"option {option!r} is in two sections")  # a mistake in sections.py
            options[option] = Option(section, f.name, f)
    return options


OPTIONS: dict[str, Option] = _options()
_HINTS = {name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()}
# Options that may differ when a run is resumed: they change how it runs, not what it computes.
RESUME_FREE = frozenset({"resume", "output", "device", "workers", "threads", "progress", "log_interval"})
_NONE_WORDS = ("none", "null")
_TRUE_WORDS, _FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0")


def field_type(option: str) -> tuple[type, bool]:
    """``(base type, optional)`` of an option: ``int``, ``float``, ``bool``, ``str`` or ``tuple``."""
    place = OPTIONS[option]
    hint = _HINTS[place.section][place.name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    return (tuple if origin is tuple else hint), optional


def _moved_key_error(key: str, where: str) -> ConfigError:
    """The error of a key of an earlier version that moved (one of :data:`MOVED_KEYS`), naming its new place."""
    return ConfigError(f"{key!r} in {where} is now {MOVED_KEYS[key]}")


def _unknown_key_error(key: str, where: str) -> ConfigError:
    if key in MOVED_KEYS:
        return _moved_key_error(key, where)
    close = difflib.get_close_matches(key, list(OPTIONS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown option {key!r} in {where}{hint}; valid options: {', '.join(OPTIONS)}")


# --- validation steps --------------------------------------------------------------------------------


def _check_config(cfg: TrainConfig) -> None:
    _check_required(cfg)
    _check_choices(cfg)
    _check_model_and_norm(cfg.model)
    _check_task(cfg)
    _check_signs(cfg)
    _check_intervals(cfg)
    _check_augmentation(cfg.augmentation)
    _check_schedule(cfg.optimisation)
    _check_distillation(cfg.distillation)


def _nothing_to_resume(output: str) -> ConfigError:
    """``--resume`` without ``--data`` where no run was saved: nothing to continue, nothing to start."""
    folder = Path(output).expanduser()
    found = f"no {CONFIG_FILE}, no resume.pt" if folder.exists() else "the folder does not exist"
    return ConfigError(f"--resume: nothing to resume in {folder} ({found}): point --output at the folder of the "
                       f"run to continue, or drop --resume and pass --data DIR to start a new run")


def _check_required(cfg: TrainConfig) -> None:
    run = cfg.run
    if not cfg.data.train and run.resume and run.output:
        raise _nothing_to_resume(run.output)
    if not cfg.data.train:
        raise ConfigError("no training data: pass --data DIR (ImageNet-style folders), --data digits, or for "
                          "--task multilabel --data digits-multilabel, an images folder with --annotations FILE "
                          "or a labels CSV")
    if not run.output:
        raise ConfigError("no output folder: pass --output DIR")


def _check_choices(cfg: TrainConfig) -> None:
    for name, option in OPTIONS.items():
        value = cfg.value(name)
        if option.choices and value is not None and value not in option.choices:
            raise ConfigError(f"{name} must be one of {', '.join(option.choices)}, got {value!r}")


def _check_model_and_norm(model: ModelSection) -> None:
    """An unknown model raises :class:`~tresnet.errors.ModelNotFoundError`; a norm its family lacks
    (In-Place ABN with a GENet) a one-line :class:`ConfigError`."""
    family = family_of(model.name)
    if model.norm is not None and model.norm not in family.norms:
        raise ConfigError(f"norm {model.norm!r} is not available for {model.name} ({family.title} norms: "
                          f"{', '.join(family.norms)}): leave norm out for the family's default, or pass "
                          f"--norm {family.norms[0]}")


def _check_task(cfg: TrainConfig) -> None:
    """The data and the loss fit the task, and the data source reads the options given (:class:`ConfigError`
    otherwise)."""
    task = get_task(cfg.task.name)
    data = cfg.data
    if data.train is not None:
        find_source(data.train, task.name, data.annotations).check(data)
    task.check_loss(cfg.loss.name)
    task.check_head(cfg.model.head)
    _check_task_capabilities(cfg, task)
    if data.val_annotations and not data.val:
        raise ConfigError("--val-annotations describes --val-data: pass the validation images folder too")


def _check_task_capabilities(cfg: TrainConfig, task) -> None:
    """What the task cannot do (distil, mix batches) is not asked, and a task's own section is left at its defaults
    by the others (:class:`ConfigError` naming the option)."""
    if cfg.distillation.method is not None and not task.distils:
        raise ConfigError(f"--distill does not apply to --task {task.name}: drop it")
    if (cfg.augmentation.mixup or cfg.augmentation.cutmix) and not task.mixes_batches:
        raise ConfigError(f"mixup and cutmix mix class targets: they do not apply to --task {task.name}; drop them")
    owners = {get_task(name).section: name for name in list_tasks() if get_task(name).section}
    for section, owner in owners.items():
        if section == task.section:
            continue
        changed = [option for option, o in OPTIONS.items() if o.section == section
                   and _plain(cfg.value(option)) != _plain(o.default)]
        if changed:
            raise ConfigError(f"--{changed[0].replace('_', '-')} ({section}.{OPTIONS[changed[0]].name}) applies to "
                              f"--task {owner}, not {task.name}: drop it")


def _values(cfg: TrainConfig, names: tuple[str, ...], *, optional: bool = False) -> dict:
    """The values of the options ``names``; with ``optional``, only those that are set."""
    values = {name: cfg.value(name) for name in names}
    return {name: value for name, value in values.items() if not optional or value is not None}


def _check_signs(cfg: TrainConfig) -> None:
    positive = {**_values(cfg, ("epochs", "batch_size", "lr", "log_interval")),
                **_values(cfg, ("max_steps_per_epoch", "max_val_images", "img_size", "clip_grad", "threads",
                                "schedule_epochs"), optional=True)}
    for name, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    non_negative = {**_values(cfg, ("weight_decay", "momentum", "seed", "split_seed", "warmup_epochs", "mixup",
                                    "cutmix", "randaugment_ops", "final_lr_factor", "asl_gamma_neg",
                                    "asl_gamma_pos", "focal_gamma")),
                    **_values(cfg, ("workers",), optional=True)}
    for name, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{name} must be 0 or more, got {value}")


def _check_intervals(cfg: TrainConfig) -> None:
    fractions = _values(cfg, ("label_smoothing", "ema_decay", "drop_path", "drop_rate", "hflip", "random_erase",
                              "mix_prob", "asl_clip", "cutout"))
    half_open = ("label_smoothing", "ema_decay", "drop_rate", "asl_clip", "cutout")
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0 or (name in half_open and value == 1.0):
            raise ConfigError(f"{name} must lie in [0, 1), got {value}")
    for name, value in _values(cfg, ("val_split", "pct_start", "threshold")).items():
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{name} must lie in (0, 1), got {value}")
    if not 0.0 < cfg.optimisation.warmup_start_factor <= 1.0:
        raise ConfigError(f"warmup_start_factor must lie in (0, 1], got {cfg.optimisation.warmup_start_factor}")
    if cfg.data.crop_pct is not None and not 0.0 < cfg.data.crop_pct <= 1.0:
        raise ConfigError(f"crop_pct must lie in (0, 1], got {cfg.data.crop_pct}")


def _check_augmentation(augmentation: AugmentationSection) -> None:
    for name in ("scale", "ratio"):
        low, high = getattr(augmentation, name)
        if not 0 < low <= high or (name == "scale" and high > 1.0):
            raise ConfigError(f"{name} must be two increasing positive numbers"
                              f"{' up to 1' if name == 'scale' else ''}, got {[low, high]}")
    if not 0 <= augmentation.randaugment_magnitude <= 30:
        raise ConfigError(f"randaugment_magnitude must lie in 0..30, got {augmentation.randaugment_magnitude}")


def _check_schedule(optimisation: OptimisationSection) -> None:
    if optimisation.div_factor < 1 or optimisation.final_div_factor < 1:
        raise ConfigError(f"div_factor and final_div_factor must be at least 1, got {optimisation.div_factor}, "
                          f"{optimisation.final_div_factor}")
    if not math.isfinite(optimisation.lr):
        raise ConfigError(f"lr must be finite, got {optimisation.lr}")
    if optimisation.schedule_epochs is not None and optimisation.schedule_epochs < optimisation.epochs:
        raise ConfigError(f"schedule_epochs ({optimisation.schedule_epochs}) is the schedule's length: it must be "
                          f"at least epochs ({optimisation.epochs})")


def _check_distillation(distillation: DistillationSection) -> None:
    """The distillation options go together: a method with a teacher, th-kd's options with th-kd, a frozen
    head without a teacher (sh-kd trains the teacher on the labels)."""
    d = distillation
    has_teacher = d.teacher is not None or d.teacher_checkpoint is not None
    if d.method is not None and not has_teacher:
        raise ConfigError(f"--distill {d.method} needs a teacher: pass --teacher-checkpoint FILE (and --teacher "
                          f"NAME when the file does not name its model)")
    if has_teacher and d.method is None:
        raise ConfigError("a teacher is given but no method: pass --distill kd or --distill th-kd")
    if d.frozen_head_from is not None and d.method is not None:
        raise ConfigError("--frozen-head-from trains a teacher for sh-kd on the labels: drop --distill and the "
                          "teacher options, then distil the student from that teacher in a second run")
    if not d.temperature > 0:
        raise ConfigError(f"distill_temperature must be positive, got {d.temperature}")
    for name, value in (("distill_weight", d.weight), ("teacher_head_weight", d.teacher_head_weight)):
        if not value >= 0:
            raise ConfigError(f"{name} must be 0 or more, got {value}")
    if not 0.0 <= d.teacher_head_blend <= 1.0:
        raise ConfigError(f"teacher_head_blend must lie in [0, 1], got {d.teacher_head_blend}")
    if d.teacher_head_blend > 0 and d.method != "th-kd":
        raise ConfigError("teacher_head_blend blends in the teacher head of th-kd: pass --distill th-kd, or "
                          "leave it at 0")


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
    return float(value[0]), float(value[1])


def _to_str(value: Any, choices: tuple | None) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not choices:
        return str(value)
    raise ValueError(value)


_CONVERTERS = {bool: _to_bool, int: _to_int, float: _to_float, tuple: _to_pair}


def coerce_value(name: str, value: Any, where: str = "the configuration") -> Any:
    """``value`` checked and converted to the type of option ``name``; :class:`ConfigError` if it cannot be."""
    if name not in OPTIONS:
        raise _unknown_key_error(name, where)
    base, optional = field_type(name)
    choices = OPTIONS[name].choices
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
    """Every value of ``raw`` (keyed by option name, :data:`OPTIONS`) checked and converted (keys may use ``-`` or
    ``_``). Raises :class:`ConfigError` as :func:`coerce_value` (a moved key names its new place)."""
    values = {str(key).replace("-", "_"): value for key, value in raw.items()}
    return {name: coerce_value(name, value, where) for name, value in values.items()}


# --- recipes -----------------------------------------------------------------------------------------

_SECTION_OPTIONS = {section: {o.name: option for option, o in OPTIONS.items() if o.section == section}
                    for section in SECTIONS}


def recipe_options(recipe: Mapping[str, Any], where: str) -> dict:
    """The options (keyed by option name, not yet coerced) of a recipe's sections; :class:`ConfigError` for a
    key that is not in a section, a section that is not a mapping, or a key its section does not have, each
    naming the key's place when it has one."""
    options = {}
    for key, value in recipe.items():
        key = str(key).replace("-", "_")
        if key not in SECTIONS:
            raise _misplaced_key_error(key, value, where)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise _not_a_section_error(key, value, where)
        for inner, inner_value in value.items():
            inner = str(inner).replace("-", "_")
            if inner not in _SECTION_OPTIONS[key]:
                raise _unknown_section_key_error(key, inner, where)
            options[_SECTION_OPTIONS[key][inner]] = inner_value
    return options


def _misplaced_key_error(key: str, value: Any, where: str) -> ConfigError:
    """A key at the top of a recipe that is not a section: an option of a section (a recipe of an earlier
    version), a moved key, or an unknown one."""
    if key in OPTIONS:
        place = OPTIONS[key]
        return ConfigError(f"{key!r} in {where} belongs in the section {place.section!r}: write it as "
                           f"{place.section}: {{{place.name}: {_plain(value)!r}}} (recipes are grouped in "
                           f"sections: {', '.join(SECTIONS)})")
    if key in MOVED_KEYS:
        return _moved_key_error(key, where)
    close = difflib.get_close_matches(key, list(SECTIONS) + list(OPTIONS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {key!r} in {where}{hint}: a recipe is a mapping of the sections "
                       f"{', '.join(SECTIONS)}")


def _not_a_section_error(section: str, value: Any, where: str) -> ConfigError:
    own = OPTIONS.get(section)  # model, task, loss, data, distill: a section named like one of its options
    fix = f": write {section}: {{{own.name}: {_plain(value)!r}}}" if own is not None and own.section == section \
        else f" of its keys ({', '.join(_SECTION_OPTIONS[section])})"
    return ConfigError(f"the section {section!r} in {where} must be a mapping{fix}, got {_plain(value)!r}")


def _unknown_section_key_error(section: str, key: str, where: str) -> ConfigError:
    if key in OPTIONS:  # an option's name where its field has another (loss_reduction is loss.reduction)
        return ConfigError(f"{key!r} in the section {section!r} of {where} is {OPTIONS[key].place}: write it as "
                           f"{OPTIONS[key].section}: {{{OPTIONS[key].name}: ...}}")
    if key in MOVED_KEYS:
        return _moved_key_error(key, where)
    names = list(_SECTION_OPTIONS[section])
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {key!r} in the section {section!r} of {where}{hint}; its keys: "
                       f"{', '.join(names)}")



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
    """The checked values of a recipe, keyed by option name (:data:`OPTIONS`; keys may use ``-`` or ``_``):
    :func:`tresnet.recipes.read_recipe`'s sections coerced to the configuration's types; :class:`ConfigError`
    for an unknown or misplaced key, a bad value or a file that is not a YAML mapping."""
    where = f"recipe {recipe_path(name_or_path)}"
    return coerce_values(recipe_options(read_recipe(name_or_path), where), where)


# --- resuming ----------------------------------------------------------------------------------------


def saved_config(output: str | Path) -> dict | None:
    """The configuration saved in the run folder ``output`` (its ``config.yaml``), or None if there is none."""
    path = Path(output).expanduser() / CONFIG_FILE
    if not path.is_file():
        return None
    return load_recipe(path)


def check_resume(given: Mapping[str, Any], saved: Mapping[str, Any], output: str | Path) -> None:
    """Raise :class:`ConfigError` naming every option of ``given`` that differs from the ``saved``
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
    model = overrides.get("model") or load_recipe(recipe).get("model") or OPTIONS["model"].default
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
    if saved is not None and output:  # a saved configuration comes from an output folder
        check_resume(values, saved, output)
        values = {**saved, **{k: v for k, v in values.items() if k in RESUME_FREE}}
    return TrainConfig.from_options(values).validate()


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (the file :func:`load_recipe` reads back), atomically."""
    text = "# effective configuration of this run (tresnet train); reusable with --config\n"
    write_text(path, text + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = ["CONFIG_FILE", "MOVED_KEYS", "OPTIONS", "RESUME_FREE", "Option", "TrainConfig", "build_config",
           "check_resume", "coerce_value", "coerce_values", "field_type", "load_recipe", "recipe_options", "recipe_for_model", "run_recipe", "save_config", "saved_config",
           "with_model_defaults"]
