"""Published ImageNet-1k top-1 of the peers the paper measures TResNet against: the one table, cited.

Our own models' top-1 lives in the model registry (:func:`tresnet.get_pretrained_cfg`), and so does timm's
evaluation of its ports of them (GENet's ``timm_eval``: ``gernet_s/m/l``); this module holds only the other
networks (the TResNet paper's Table 1), keyed by timm model name. :func:`published_top1` reads both.
"""

from __future__ import annotations

from dataclasses import dataclass

from tresnet.errors import ModelNotFoundError
from tresnet.models.registry import MODEL_CONFIGS, get_pretrained_cfg

PAPER = "TResNet paper (arXiv 2003.13630), Table 1 (V100 speed comparison)"
TIMM_RESULTS = ("timm results/results-imagenet.csv (huggingface/pytorch-image-models), idstcv_in1k weights, "
                "as the model registry records it (timm_eval)")
# Where the registry's top-1 of our models comes from, per family.
OURS = {"tresnet": "tresnet model registry (TResNet paper, Tables 1 and 3)",
        "genet": "tresnet model registry (GENet paper, arXiv 2006.14090, at the official evaluation size)"}


@dataclass(frozen=True)
class PublishedResult:
    """A published ImageNet-1k top-1 (%), the input side it was measured at, and where it comes from."""

    top1: float
    img_size: int
    source: str


# timm name -> published top-1: the peers of the TResNet paper's Table 1 (arXiv 2003.13630).
PAPER_RESULTS: dict[str, PublishedResult] = {
    "resnet50": PublishedResult(79.0, 224, PAPER),
    "resnet50d": PublishedResult(79.3, 224, PAPER),
    "resnext50_32x4d": PublishedResult(78.5, 224, PAPER),
    "efficientnet_b1": PublishedResult(79.2, 240, PAPER),
    "seresnext50_32x4d": PublishedResult(79.0, 224, PAPER),
    "mixnet_l": PublishedResult(79.0, 224, PAPER),
}


def _timm_evaluations() -> dict[str, PublishedResult]:
    """timm's evaluation of its ports of our registered models (GENet's ``gernet_s/m/l``), read from the
    model registry (``timm_name``, ``timm_eval``): the one place those figures live."""
    return {cfg["timm_name"]: PublishedResult(float(cfg["timm_eval"]["top1"]), int(cfg["timm_eval"]["img_size"]),
                                              TIMM_RESULTS)
            for cfg in MODEL_CONFIGS.values() if cfg.get("timm_eval") and cfg.get("timm_name")}


# timm name -> published top-1 of every peer: the paper's Table 1, and GENet, whose timm ports are the ones
# benchmarked here (timm's own evaluation of the ported weights).
PEER_RESULTS: dict[str, PublishedResult] = {**PAPER_RESULTS, **_timm_evaluations()}

# The peer list of the paper's speed table, in its order, plus GENet (GPU-efficient networks).
PAPER_PEERS: tuple[str, ...] = ("resnet50", "resnet50d", "resnext50_32x4d", "efficientnet_b1",
                                "seresnext50_32x4d", "mixnet_l", "gernet_s", "gernet_m", "gernet_l")


def published_top1(name: str) -> PublishedResult | None:
    """The published top-1 of architecture ``name`` (ours or a peer), or None when none is on record.

    ``name`` is a bare architecture name: ``tresnet_m`` (also for timm's implementation of it) or a
    timm name such as ``resnet50``. Never raises for an unknown name.
    """
    try:
        cfg = get_pretrained_cfg(name)
    except ModelNotFoundError:
        return PEER_RESULTS.get(name)
    top1 = cfg.get("top1")
    source = OURS.get(cfg["family"], "tresnet model registry")
    return None if top1 is None else PublishedResult(float(top1), int(cfg["input_size"][-1]), source)
