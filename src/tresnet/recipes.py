"""The training recipes shipped with the package (``tresnet/configs/*.yaml``) and how to read one: a name or a
path to a YAML mapping of configuration keys to values. :mod:`tresnet.training.config` checks and coerces them;
the bundled sets' demo recipes also give the split and size a run on them used by default."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from tresnet.errors import ConfigError


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


def read_recipe(name_or_path: str | Path) -> dict:
    """The raw mapping of a recipe (a shipped name or a YAML file), unchecked; :class:`ConfigError` for a file
    that is not valid YAML or not a mapping, or a name that is neither."""
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
    return raw


__all__ = ["list_recipes", "read_recipe", "recipe_path"]
