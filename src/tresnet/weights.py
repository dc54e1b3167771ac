"""Where a model's published weights are on this machine: never downloaded, only looked up.

A registered model has one or more sets of published weights, each named by a tag as timm names them
(``tresnet_m.miil_in1k``, ``tresnet_m.miil_in21k_ft_in1k``, ``genet_light`` -> ``gernet_s.idstcv_in1k``); the
first of a model's tags is its default. :func:`find_pretrained` looks for the file of ``NAME`` or ``NAME.TAG``
in three places, in order (:data:`PLACES`):

- our own cache, ``$TRESNET_HOME`` (default ``~/.cache/tresnet``): ``NAME.safetensors`` and the like, or the
  official release's file name;
- the Hugging Face hub cache, where timm leaves its downloads (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``): ``models--timm--ARCH.TAG/snapshots/REVISION/model.safetensors``, found through
  ``huggingface_hub``'s local-only look-up (``pip install 'tresnet[hub]'``);
- the ``torch.hub`` checkpoints folder (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch``), where the
  files of the official releases and of timm's older versions land under their own names.

Each place is a :class:`WeightsPlace`: a new place is one more class in :data:`PLACES`.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tresnet.errors import CheckpointError, ConfigError
from tresnet.models.registry import get_pretrained_cfg, list_models

# The files that hold a model's weights in our cache (NAME the model, NAME.TAG for a tag other than its default).
_OWN_FILES = ("{name}.safetensors", "{name}.pth", "{name}.pth.tar", "{name}.bin", "{name}/model.safetensors",
              "{name}/pytorch_model.bin")
# The files of a timm repository on the Hugging Face hub, in order of preference.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_ORGANIZATION = "timm"


@dataclass(frozen=True)
class PretrainedWeights:
    """One published set of weights of a registered model.

    ``model`` and ``tag`` name it (``tresnet_m``, ``miil_in21k_ft_in1k``); ``hub_repo`` is timm's repository on the
    Hugging Face hub (``timm/tresnet_m.miil_in21k_ft_in1k``); ``release_files`` the names (shell patterns) its file
    has when downloaded from the official release or by timm's older versions; ``default`` says whether
    ``pretrained=True`` without a tag means it; ``num_classes`` and ``top1`` are what it was published with.
    """

    model: str
    tag: str
    hub_repo: str
    release_files: tuple[str, ...]
    default: bool
    num_classes: int = 1000
    top1: float | None = None

    @property
    def name(self) -> str:
        """``MODEL.TAG``, as timm writes it."""
        return f"{self.model}.{self.tag}"

    def own_files(self) -> list[str]:
        """The file names accepted in our cache: ``NAME.safetensors`` and the like (``NAME.TAG...`` for a tag that
        is not the default), then the release's names."""
        stems = [self.model, self.name] if self.default else [self.name]
        return [p.format(name=stem) for stem in stems for p in _OWN_FILES] + list(self.release_files)


def split_tag(name: str) -> tuple[str, str | None]:
    """``"tresnet_m.miil_in1k"`` -> ``("tresnet_m", "miil_in1k")``; a name without a tag -> ``(name, None)``."""
    model, _, tag = name.partition(".")
    return model, tag or None


def published_weights(model: str) -> list[PretrainedWeights]:
    """The published weights of registered model ``model``, its default first; :class:`ModelNotFoundError` for an
    unknown name."""
    cfg = get_pretrained_cfg(model)
    timm_name = cfg.get("timm_name", cfg["arch"])
    return [PretrainedWeights(model, tag, f"{HUB_ORGANIZATION}/{timm_name}.{tag}", tuple(entry.get("files", ())),
                              default=index == 0, num_classes=entry.get("num_classes", 1000), top1=entry.get("top1"))
            for index, (tag, entry) in enumerate(cfg.get("weights", {}).items())]


def resolve_weights(name: str, tag: str | None = None) -> PretrainedWeights:
    """The weights ``name`` (``MODEL`` or ``MODEL.TAG``) or ``tag`` names: a tag is timm's (``miil_in21k_ft_in1k``)
    or its end after the source's name (``in21k_ft_in1k``). Raises :class:`ConfigError` for a tag the model has
    not, or two tags, and :class:`~tresnet.errors.ModelNotFoundError` for an unknown model."""
    model, named = split_tag(name)
    if named and tag and named != tag:
        raise ConfigError(f"{name} names the tag {named!r} and the pretrained tag is {tag!r}: give one of them")
    tag = named or tag
    choices = published_weights(model)
    if not choices:
        raise ConfigError(f"{model} has no published weights: train it, or pass a checkpoint")
    if tag is None:
        return choices[0]
    matches = [w for w in choices if w.tag == tag] or [w for w in choices if w.tag.endswith("_" + tag)]
    if len(matches) != 1:
        known = ", ".join(w.tag for w in choices)
        raise ConfigError(f"{model} has {'no' if not matches else 'more than one'} set of weights tagged {tag!r}: "
                          f"its tags are {known}")
    return matches[0]


def cache_dir() -> Path:
    """Our own cache: ``$TRESNET_HOME``, else ``~/.cache/tresnet``."""
    return Path(os.environ.get("TRESNET_HOME", "~/.cache/tresnet")).expanduser()


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as ``huggingface_hub`` finds it: ``HF_HUB_CACHE`` (or the older
    ``HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` or
    ``~/.cache/huggingface/hub``. Read at each call, so that a changed environment is seen."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface")
    return Path(home).expanduser() / "hub"


def torch_hub_checkpoints_dir() -> Path:
    """The folder where ``torch.hub`` downloads files: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


class WeightsPlace:
    """A place on this machine where weights may be: :meth:`find` looks, :meth:`wanted` says what to put there."""

    title = ""

    def folder(self) -> Path:
        raise NotImplementedError

    def find(self, weights: PretrainedWeights) -> Path | None:
        """The file of ``weights`` here, or None."""
        raise NotImplementedError

    def wanted(self, weights: PretrainedWeights) -> str:
        """What a user puts here for ``weights`` to be found (for the message of a missing file)."""
        raise NotImplementedError


def _first_match(folder: Path, patterns: list[str]) -> Path | None:
    """The first file in ``folder`` that matches one of ``patterns`` (plain names or shell patterns), in their
    order."""
    if not folder.is_dir():
        return None
    for pattern in patterns:
        if not any(c in pattern for c in "*?["):
            if (folder / pattern).is_file():
                return folder / pattern
            continue
        found = sorted(p for p in folder.iterdir() if p.is_file() and fnmatch.fnmatch(p.name, pattern))
        if found:
            return found[0]
    return None


class OwnCache(WeightsPlace):
    title = "tresnet cache"

    def folder(self) -> Path:
        return cache_dir()

    def find(self, weights: PretrainedWeights) -> Path | None:
        return _first_match(self.folder(), weights.own_files())

    def wanted(self, weights: PretrainedWeights) -> str:
        return f"{self.folder()} (TRESNET_HOME): one of {', '.join(weights.own_files())}"


class HuggingFaceCache(WeightsPlace):
    title = "Hugging Face cache"

    def folder(self) -> Path:
        return hub_cache_dir()

    def find(self, weights: PretrainedWeights) -> Path | None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # the `hub` extra is optional: without it this place is skipped (and the message says so)
            return None
        for filename in HUB_FILES:
            found = try_to_load_from_cache(weights.hub_repo, filename, cache_dir=self.folder())
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        return None

    def wanted(self, weights: PretrainedWeights) -> str:
        repo_folder = "models--" + weights.hub_repo.replace("/", "--")
        note = "" if _has_huggingface_hub() else " (looked only with pip install 'tresnet[hub]')"
        return (f"{self.folder()} (HF_HUB_CACHE or HF_HOME): {repo_folder}/snapshots/REVISION/{HUB_FILES[0]}, as "
                f"`hf download {weights.hub_repo}` or timm leaves it{note}")


class TorchHubFolder(WeightsPlace):
    title = "torch.hub checkpoints"

    def folder(self) -> Path:
        return torch_hub_checkpoints_dir()

    def find(self, weights: PretrainedWeights) -> Path | None:
        return _first_match(self.folder(), list(weights.release_files))

    def wanted(self, weights: PretrainedWeights) -> str:
        if not weights.release_files:
            return f"{self.folder()} (TORCH_HOME): no released file of {weights.name} is known by name"
        return f"{self.folder()} (TORCH_HOME): one of {', '.join(weights.release_files)}"


def _has_huggingface_hub() -> bool:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return False
    return True


PLACES: tuple[WeightsPlace, ...] = (OwnCache(), HuggingFaceCache(), TorchHubFolder())


@dataclass(frozen=True)
class FoundWeights:
    """Where :func:`find_pretrained` found the file of ``weights``: its ``path`` and the ``place`` (a title)."""

    weights: PretrainedWeights
    path: Path
    place: str


def locate(weights: PretrainedWeights) -> FoundWeights | None:
    """The first place (:data:`PLACES`, in order) that holds ``weights``, or None."""
    for place in PLACES:
        path = place.find(weights)
        if path is not None:
            return FoundWeights(weights, path, place.title)
    return None


def find_pretrained(name: str, tag: str | None = None) -> FoundWeights:
    """The file of the published weights of ``name`` (``MODEL`` or ``MODEL.TAG``; or ``tag``) on this machine.

    Raises :class:`CheckpointError` listing every place looked in and the file to put there when none holds it,
    :class:`ConfigError` for an unknown tag (:func:`resolve_weights`).
    """
    weights = resolve_weights(name, tag)
    found = locate(weights)
    if found is None:
        places = "; ".join(f"{place.title}: {place.wanted(weights)}" for place in PLACES)
        others = [w.tag for w in published_weights(weights.model) if w != weights and locate(w) is not None]
        hint = (f" This machine has other weights of {weights.model}: tag {', '.join(others)} (MODEL.TAG, or "
                f"--pretrained-tag).") if others else ""
        raise CheckpointError(f"no pretrained weights for {weights.name} on this machine (this package never "
                              f"downloads). Looked in {places}. Or pass a checkpoint file.{hint}")
    return found


def weights_on_machine(pattern: str = "*") -> list[tuple[PretrainedWeights, FoundWeights | None]]:
    """Every published set of weights of the models matching ``pattern``, with where it is (None: nowhere)."""
    return [(weights, locate(weights)) for model in list_models(pattern) for weights in published_weights(model)]


__all__ = ["HUB_FILES", "PLACES", "FoundWeights", "HuggingFaceCache", "OwnCache", "PretrainedWeights",
           "TorchHubFolder", "WeightsPlace", "cache_dir", "find_pretrained", "hub_cache_dir", "locate",
           "published_weights", "resolve_weights", "split_tag", "torch_hub_checkpoints_dir", "weights_on_machine"]
