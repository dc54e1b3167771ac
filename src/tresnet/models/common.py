"""What every family's network shares: the classifier heads (``fc`` and ``ml_decoder``), feature
descriptions, drop-path rates, and block-wise gradient checkpointing that leaves the norms' running
statistics alone."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tresnet.errors import ConfigError
from tresnet.layers import FastGlobalAvgPool, MLDecoderHead

# The classifier heads every family can carry: global pooling + linear (``head.fc``, the papers'), or an
# ML-Decoder on the last feature map (``head.decoder.*``; Ridnik et al., Alibaba-MIIL/ML_Decoder).
HEADS = ("fc", "ml_decoder")


class FeatureInfo(list):
    """A list of ``{"num_chs", "reduction", "module"}`` dicts, with timm's accessors."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]


class ClassifierHead(nn.Module):
    """Global average pooling, optional dropout, ``fc`` (``head.fc`` in every family, as in timm)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.global_pool = FastGlobalAvgPool(flatten=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        # Initialised by the network's reset_parameters; reset_classifier uses new_classifier.
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)


def check_head(head: str) -> str:
    """``head`` if it is one of :data:`HEADS`; :class:`ConfigError` naming the choices otherwise."""
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}: use one of {', '.join(HEADS)}")
    return head


def create_head(head: str, in_features: int, num_classes: int, drop_rate: float = 0.0,
                head_options: dict | None = None) -> nn.Module:
    """The classifier head ``head`` (see :data:`HEADS`) for ``in_features`` channels and ``num_classes``.

    ``head_options`` go to :class:`~tresnet.layers.MLDecoderHead` (``num_queries``, ``embed_dim``...).
    Raises :class:`ConfigError` for an unknown head, an ML-Decoder without classes or with ``drop_rate``
    (it has its own dropout, 0.1 as published), or options given to the ``fc`` head.
    """
    check_head(head)
    if head == "fc":
        if head_options:
            raise ConfigError(f"head options {sorted(head_options)} are for the ML-Decoder head: use head='ml_decoder'")
        return ClassifierHead(in_features, num_classes, drop_rate)
    if num_classes < 1:
        raise ConfigError(f"an ML-Decoder head needs num_classes >= 1, got {num_classes}: use head='fc' for "
                          f"pooled features")
    if drop_rate > 0:
        raise ConfigError(f"drop_rate={drop_rate} is the fc head's dropout; the ML-Decoder has its own (0.1, as "
                          f"published): leave drop_rate at 0")
    try:
        return MLDecoderHead(in_features, num_classes, **(head_options or {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad ML-Decoder head options {head_options}: {e}") from e


def new_classifier(in_features: int, num_classes: int) -> nn.Module:
    """A linear classifier initialised as in both papers' code (normal, std 0.01; zero bias), or Identity for 0."""
    if num_classes <= 0:
        return nn.Identity()
    fc = nn.Linear(in_features, num_classes)
    nn.init.normal_(fc.weight, 0.0, 0.01)
    nn.init.zeros_(fc.bias)
    return fc


def check_out_indices(out_indices: Iterable[int], count: int, names: str) -> tuple[int, ...]:
    """``out_indices`` as a tuple, or ValueError naming the valid range (``names`` describes it)."""
    out_indices = tuple(out_indices)
    if not out_indices or any(i not in range(count) for i in out_indices):
        raise ValueError(f"out_indices {out_indices} invalid; pick from {names}")
    return out_indices


def stage_drop_path_rates(depths: Iterable[int], drop_path_rate: float) -> list[list[float]]:
    """Each block's drop-path rate, rising linearly from 0 to ``drop_path_rate`` over the network, per stage."""
    depths = list(depths)
    total_blocks = sum(depths)
    rates = torch.linspace(0, drop_path_rate, total_blocks).tolist() if total_blocks else []
    stage_rates, start = [], 0
    for n in depths:
        stage_rates.append(rates[start:start + n])
        start += n
    return stage_rates


class ClassifierSurface:
    """The surface every family's network shares (timm's names), for an ``nn.Module`` with ``head``
    (a :class:`ClassifierHead` or an :class:`~tresnet.layers.MLDecoderHead`, None when ``features_only``),
    ``num_features``, ``num_classes``, ``pretrained_cfg``, ``features_only`` and its own
    ``forward_features`` / ``forward_intermediates``."""

    # What the network sets (annotations only: the mixin adds no class attributes).
    head: nn.Module | None
    num_features: int
    num_classes: int
    pretrained_cfg: dict[str, Any]
    features_only: bool
    grad_checkpointing: bool

    if TYPE_CHECKING:  # what the nn.Module and the network itself provide
        def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
        def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...
        def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def _init_outputs(self, all_features: list[dict], features_only: bool, out_indices: Iterable[int],
                      index_names: str, head: str, num_classes: int, drop_rate: float,
                      head_options: dict | None) -> None:
        """Set ``features_only``, ``out_indices``, ``feature_info`` and ``head``: the chosen feature maps of
        ``all_features`` and no head with ``features_only`` (``index_names`` describes the valid indices),
        else all of them and the classifier ``head`` (:func:`create_head`)."""
        self.features_only = features_only
        self.all_feature_info = FeatureInfo(all_features)  # every feature point, whichever are returned
        if features_only:
            self.out_indices = check_out_indices(out_indices, len(all_features), index_names)
            self.feature_info = FeatureInfo(all_features[i] for i in self.out_indices)
            self.head = None
        else:
            self.out_indices = ()
            self.feature_info = FeatureInfo(all_features)
            self.head = create_head(head, self.num_features, num_classes, drop_rate, head_options)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward instead of keeping its activations."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """``head.fc`` for the fc head; the whole :class:`~tresnet.layers.MLDecoderHead` for an ML-Decoder."""
        if isinstance(self.head, MLDecoderHead):
            return self.head
        return cast(ClassifierHead, self.head).fc

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for ``num_classes``: ``head.fc`` (0 gives pooled features), or a new
        ML-Decoder head with the paper's sizes for that count (which needs ``num_classes >= 1``).

        Raises ValueError for a ``features_only`` model, :class:`ConfigError` for an ML-Decoder without classes.
        """
        if self.head is None:
            raise ValueError("a features_only model has no classifier")
        param = next(self.parameters())
        if isinstance(self.head, MLDecoderHead):
            head = create_head("ml_decoder", self.num_features, num_classes)
            self.head = head.to(device=param.device, dtype=param.dtype)
        else:
            self.head.fc = new_classifier(self.num_features, num_classes).to(device=param.device, dtype=param.dtype)
        self.num_classes = num_classes
        if self.pretrained_cfg:
            self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Classify a feature map from ``forward_features``; with ``pre_logits`` the fc head's pooled
        features, or the ML-Decoder's decoded queries ``(N, num_queries, embed_dim)``."""
        return cast(nn.Module, self.head)(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))


def run_until(modules: Iterable[nn.Module], wanted: tuple[int, ...], x: torch.Tensor) -> list[torch.Tensor]:
    """Apply ``modules`` in order to ``x``; the outputs of those at the ``wanted`` positions (stops after the last)."""
    outs = []
    for index, module in enumerate(modules):
        if index > max(wanted):
            break
        x = module(x)
        if index in wanted:
            outs.append(x)
    return outs


@contextmanager
def running_stats_frozen(module: nn.Module):
    """While a checkpointed block is recomputed in backward, its norms must not update their statistics again."""
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                cast(torch.Tensor, m.num_batches_tracked).copy_(tracked)


def checkpointed(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)``, recomputed in backward instead of keeping its activations (statistics updated once)."""
    return checkpoint(block, x, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), running_stats_frozen(block)))


__all__ = ["HEADS", "ClassifierHead", "ClassifierSurface", "FeatureInfo", "check_head", "check_out_indices",
           "checkpointed", "create_head", "new_classifier", "run_until", "running_stats_frozen", "stage_drop_path_rates"]
