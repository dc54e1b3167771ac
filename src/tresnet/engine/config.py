"""Training configuration: one dataclass, recipes as YAML files, and the rules that merge them.

Every field of :class:`TrainConfig` is both a recipe key and a ``tresnet train`` option (``lr`` is
``--lr``, ``batch_size`` is ``--batch-size``). Precedence: the field's default < the recipe (a YAML
file, or a shipped recipe name; ``digits-demo`` when ``--data digits`` comes with no recipe) < options
given on the command line. ``--resume`` continues with the configuration saved in the output folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tresnet.errors import ConfigError

CONFIG_FILE = "config.yaml"  # the effective configuration, saved in the output folder
DIGITS = "digits"  # the data set bundled with scikit-learn
DIGITS_RECIPE = "digits-demo"

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
AUTO_AUGMENTS = ("autoaugment", "randaugment")
ERASE_MODES = ("pixel", "const")
AMP_DTYPES = ("float16", "bfloat16")
NORMS = ("inplace_abn", "bn")
CROP_MODES = ("center", "squash")


def _opt(help_text: str, default: Any = None, *, choices: tuple | None = None, group: str = "",
         factory=None) -> Any:
    metadata = {"help": help_text, "choices": choices, "group": group}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a training run depends on. See ``docs/sections/train.md`` for the recipes."""

    # --- run
    model: str = _opt("model name, e.g. tresnet_m, tresnet_l, tresnet_xl, tresnet_v2_l", "tresnet_m", group="run")
    data: str | None = _opt("ImageNet-style folder (train/ and val/, or class folders) or 'digits'", group="run")
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
    warmup_epochs: float = _opt("cosine/constant: linear warm-up length in epochs", 0.0, group="optimizer")
    warmup_start_factor: float = _opt("cosine/constant: warm-up starts at lr x this", 0.01,
                                      group="optimizer")
    final_lr_factor: float = _opt("cosine: the last step's lr is lr x this", 0.0, group="optimizer")
    pct_start: float = _opt("one-cycle: fraction of the steps spent rising to lr", 0.2, group="optimizer")
    div_factor: float = _opt("one-cycle: the first lr is lr / this", 25.0, group="optimizer")
    final_div_factor: float = _opt("one-cycle: the last lr is lr / div_factor / this", 1e4, group="optimizer")
    clip_grad: float | None = _opt("clip the gradient norm to this (none by default)", group="optimizer")
    label_smoothing: float = _opt("label smoothing of the cross-entropy", 0.1, group="optimizer")
    ema_decay: float = _opt("decay per step of the weights' moving average (0: no EMA)", 0.0,
                            group="optimizer")
    ema_warmup: bool = _opt("EMA: decay min(ema_decay, (1 + n) / (10 + n)) at update n (short runs)", False,
                            group="optimizer")
    # --- model options
    img_size: int | None = _opt("training and validation image side (default: the model's)", group="model")
    drop_path: float = _opt("stochastic depth rate of the last block", 0.0, group="model")
    drop_rate: float = _opt("dropout before the classifier", 0.0, group="model")
    norm: str = _opt("norm layers: in-place ABN (the paper's) or plain BatchNorm", "inplace_abn", choices=NORMS,
                     group="model")
    sync_bn: bool = _opt("distributed: synchronise norm statistics across processes", True, group="model")
    amp: bool = _opt("mixed precision (float16 with loss scaling on CUDA, bfloat16 on CPU)", False,
                     group="model")
    amp_dtype: str | None = _opt("mixed precision type (default: float16 on CUDA, bfloat16 on CPU)",
                                 choices=AMP_DTYPES, group="model")
    channels_last: bool = _opt("channels-last memory format for weights and inputs", False, group="model")
    # --- data and augmentation
    val_split: float = _opt("fraction of train carved out as validation when there is no val folder", 0.1,
                            group="data")
    split_seed: int = _opt("seed of that split (fixed so that --seed does not change the val set)", 0,
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
    mixup: float = _opt("mixup alpha (0: off)", 0.0, group="data")
    cutmix: float = _opt("cutmix alpha (0: off)", 0.0, group="data")
    mix_prob: float = _opt("probability of mixing a batch when mixup or cutmix is on", 1.0, group="data")
    crop_pct: float | None = _opt("validation: centre-crop fraction (default: the model's)", group="data")
    crop_mode: str | None = _opt("validation: 'center' crop or 'squash' the whole image (default: the model's)",
                                 choices=CROP_MODES, group="data")

    def validate(self) -> TrainConfig:
        """Check ranges and required values; raise :class:`ConfigError` naming the bad one."""
        if not self.data:
            raise ConfigError("no training data: pass --data DIR (ImageNet-style folders) or --data digits")
        if not self.output:
            raise ConfigError("no output folder: pass --output DIR")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "log_interval": self.log_interval}
        for name in ("max_steps_per_epoch", "max_val_images", "img_size", "clip_grad", "threads"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        non_negative = {"weight_decay": self.weight_decay, "momentum": self.momentum, "seed": self.seed,
                        "split_seed": self.split_seed, "warmup_epochs": self.warmup_epochs,
                        "mixup": self.mixup, "cutmix": self.cutmix, "randaugment_ops": self.randaugment_ops,
                        "final_lr_factor": self.final_lr_factor}
        if self.workers is not None:
            non_negative["workers"] = self.workers
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} must be 0 or more, got {value}")
        fractions = {"label_smoothing": self.label_smoothing, "ema_decay": self.ema_decay,
                     "drop_path": self.drop_path, "drop_rate": self.drop_rate, "hflip": self.hflip,
                     "random_erase": self.random_erase, "mix_prob": self.mix_prob}
        for name, value in fractions.items():
            if not 0.0 <= value <= 1.0 or (name in ("label_smoothing", "ema_decay", "drop_rate") and value == 1.0):
                raise ConfigError(f"{name} must lie in [0, 1), got {value}")
        for name, value in {"val_split": self.val_split, "pct_start": self.pct_start}.items():
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{name} must lie in (0, 1), got {value}")
        if not 0.0 < self.warmup_start_factor <= 1.0:
            raise ConfigError(f"warmup_start_factor must lie in (0, 1], got {self.warmup_start_factor}")
        if self.crop_pct is not None and not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must lie in (0, 1], got {self.crop_pct}")
        for name in ("scale", "ratio"):
            low, high = getattr(self, name)
            if not 0 < low <= high or (name == "scale" and high > 1.0):
                raise ConfigError(f"{name} must be two increasing positive numbers"
                                  f"{' up to 1' if name == 'scale' else ''}, got {[low, high]}")
        if not 0 <= self.randaugment_magnitude <= 30:
            raise ConfigError(f"randaugment_magnitude must lie in 0..30, got {self.randaugment_magnitude}")
        if self.div_factor < 1 or self.final_div_factor < 1:
            raise ConfigError(f"div_factor and final_div_factor must be at least 1, got {self.div_factor}, "
                              f"{self.final_div_factor}")
        if not math.isfinite(self.lr):
            raise ConfigError(f"lr must be finite, got {self.lr}")
        return self

    def to_dict(self) -> dict:
        """Plain values (tuples as lists) in field order, as saved in ``config.yaml``."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


# --- fields: names, types, coercion ----------------------------------------------------------------

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)
# Options that may differ when a run is resumed: they change how it runs, not what it computes.
RESUME_FREE = frozenset({"resume", "output", "device", "workers", "threads", "progress", "log_interval"})


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
    close = difflib.get_close_matches(key, list(FIELDS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {key!r} in {where}{hint}; valid keys: {', '.join(FIELDS)}")


def coerce_value(name: str, value: Any, where: str = "the configuration") -> Any:
    """``value`` checked and converted to the type of field ``name``; :class:`ConfigError` if it cannot be."""
    if name not in FIELDS:
        raise _unknown_key_error(name, where)
    base, optional = field_type(name)
    choices = FIELDS[name].metadata.get("choices")
    bad = ConfigError(f"{name} in {where} must be {_describe(base, optional, choices)}, got {value!r}")
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and base is not str):
        if optional:
            return None
        raise bad
    if isinstance(value, str) and value.lower() in ("none", "null") and optional and choices:
        return None
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad
    if base is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if base is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if base is tuple:
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise bad
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise bad from None
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not choices:
            return str(value)
        raise bad
    if choices and value not in choices:
        raise ConfigError(f"{name} in {where} must be one of {', '.join(choices)}"
                          f"{' (or none)' if optional else ''}, got {value!r}")
    return value


def _describe(base: type, optional: bool, choices) -> str:
    if choices:
        text = "one of " + ", ".join(choices)
    else:
        text = {bool: "true or false", int: "an integer", float: "a number", tuple: "two numbers",
                str: "a string"}[base]
    return text + (" (or none)" if optional else "")


# --- recipes -----------------------------------------------------------------------------------------


def _recipes_dir():
    return resources.files("tresnet") / "configs"


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package (``imagenet-paper``, ``finetune``, ...)."""
    return sorted(p.name[: -len(".yaml")] for p in _recipes_dir().iterdir() if p.name.endswith(".yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """The file of a recipe: a path to a YAML file, or the name of a shipped recipe."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    name = name[: -len(".yaml")] if name.endswith(".yaml") else name
    shipped = _recipes_dir() / f"{name}.yaml"
    if "/" not in name and shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(f"no recipe {str(name_or_path)!r}: not a YAML file, nor a shipped recipe "
                      f"({', '.join(list_recipes())})")


def load_recipe(name_or_path: str | Path) -> dict:
    """The checked values of a recipe (keys may use ``-`` or ``_``); :class:`ConfigError` for an
    unknown key, a bad value or a file that is not a YAML mapping."""
    path = recipe_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"recipe {path} is not valid YAML: {first}") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping of keys to values, got a {type(raw).__name__}")
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        values[name] = coerce_value(name, value, f"recipe {path}")
    return values


def build_config(recipe: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """The effective configuration of a run: defaults < ``recipe`` < ``overrides``.

    ``--data digits`` with no recipe uses the ``digits-demo`` recipe. With ``resume`` and a
    ``config.yaml`` in the output folder, that saved configuration is the base, and a recipe or option
    that contradicts it raises :class:`ConfigError` (a resumed run must compute what it started).
    """
    overrides = {k: coerce_value(k, v, "the options") for k, v in (overrides or {}).items()}
    values: dict = {}
    if recipe is None and overrides.get("data") == DIGITS:
        recipe = DIGITS_RECIPE
    recipe_values = load_recipe(recipe) if recipe is not None else {}
    values.update(recipe_values)
    values.update(overrides)
    output = values.get("output")
    saved_path = Path(output).expanduser() / CONFIG_FILE if output else None
    if values.get("resume") and saved_path is not None and saved_path.is_file():
        saved = load_recipe(saved_path)
        conflicts = [k for k, v in values.items() if k not in RESUME_FREE and k in saved and saved[k] != v]
        if conflicts:
            details = ", ".join(f"{k} (saved {saved[k]!r}, given {values[k]!r})" for k in conflicts)
            raise ConfigError(f"--resume continues the run in {output} with its saved configuration, and these "
                              f"settings differ: {details}; drop them, or start a new run in another --output")
        values = {**saved, **{k: v for k, v in values.items() if k in RESUME_FREE}}
    return TrainConfig(**values).validate()


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (the file :func:`load_recipe` reads back), atomically."""
    from tresnet.checkpoint import atomic_write

    text = "# effective configuration of this run (tresnet train); reusable with --config\n"
    text += yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


__all__ = ["CONFIG_FILE", "DIGITS", "FIELDS", "RESUME_FREE", "TrainConfig", "build_config", "coerce_value",
           "field_type", "list_recipes", "load_recipe", "recipe_path", "save_config"]
