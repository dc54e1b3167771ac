"""``create_model``: build a model of any registered family and, if asked, load its weights from a local file (read
once); ``create_detector``: torchvision's FCOS or RetinaNet on one of them; ``load_network``: whichever of the two a
checkpoint holds."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import cast

from torch import nn

from tresnet.checkpoint import (
    Checkpoint,
    load_state,
    open_checkpoint,
    read_checkpoint_metadata,
    recorded_head,
)
from tresnet.errors import CheckpointError, ConfigError
from tresnet.layers.ml_decoder import ml_decoder_options
from tresnet.models.common import check_head
from tresnet.models.detection import DETECTOR_HEADS, Detector, DetectorConfig, DetectorOptions
from tresnet.models.registry import (
    PREPROCESSING_KEYS,
    build_model,
    get_pretrained_cfg,
    list_models,
    models_of_arch,
)
from tresnet.tasks import DEFAULT_TASK, NetworkSpec, get_task
from tresnet.tasks.detection import TASK as DETECTION_TASK
from tresnet.tasks.detection import assemble_detector, detector_body
from tresnet.weights import FoundWeights, find_pretrained, split_tag


def model_name_from_checkpoint(path: str | os.PathLike, metadata: dict | None = None) -> str:
    """The registered model a checkpoint holds: the name our files record, else the only model of its network.

    Raises :class:`~tresnet.errors.ConfigError` when the file does not say and its network is built by
    several models (``tresnet_m`` and ``tresnet_m_448``), and :class:`CheckpointError` for a bad file.
    """
    meta = metadata if metadata is not None else read_checkpoint_metadata(path)
    name = meta.get("model")
    if name in list_models():
        return name
    arch = meta.get("arch")
    candidates = models_of_arch(arch) if arch else []
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise ConfigError(f"{meta['format']} checkpoint {path} holds a {arch} network, which "
                          f"{' and '.join(candidates)} both build: name the model (--model NAME)")
    raise ConfigError(f"{meta['format']} checkpoint {path} does not say which model it holds: name the model "
                      f"(--model NAME; see `tresnet info`)")


def resolve_head(head: str | None, ckpt: Checkpoint | None, *, num_classes: int | None = None,
                 features_only: bool = False) -> str:
    """The head to build: ``head``, else the checkpoint's (``head.decoder.*`` -> ``"ml_decoder"``), else ``"fc"``.

    Raises :class:`ConfigError` for an unknown head and :class:`CheckpointError` for a ``head`` that
    contradicts the checkpoint's, unless ``num_classes`` is given (then the backbone is loaded with a fresh
    head: fine-tuning an ImageNet ``fc`` checkpoint with an ML-Decoder is the published recipe).
    """
    if head is not None:
        check_head(head)
    held = ckpt.metadata.get("head") if ckpt is not None else None
    if head is None:
        return held or "fc"
    if ckpt is not None and held and held != head and num_classes is None and not features_only:
        raise CheckpointError(f"{ckpt.format} checkpoint {ckpt.path} has a {held!r} head, not {head!r}: leave "
                              f"head out (or head={held!r}) to load it, or pass num_classes to load the backbone "
                              f"with a fresh {head!r} head")
    return head


def _name_or_recorded(name: str | None, path: Path | None, ckpt: Checkpoint | None) -> str:
    """``name``, else the model the checkpoint names (the callers check that one of them is given)."""
    if name:
        return name
    assert path is not None and ckpt is not None
    return model_name_from_checkpoint(path, ckpt.metadata)


def _head_options(head: str, ckpt: Checkpoint | None, num_classes: int, given: dict | None) -> dict | None:
    """The ML-Decoder sizes of the checkpoint's head (queries, widths) when it is loaded as it is, updated
    with the ``given`` ones."""
    if head != "ml_decoder" or ckpt is None:
        return given
    options = ml_decoder_options(ckpt.state_dict)
    if not options or options.pop("num_classes") != num_classes:
        return given
    return {**options, **(given or {})}


def recorded_preprocessing(metadata: dict, in_chans: int = 3) -> dict:
    """The ``pretrained_cfg`` entries a checkpoint of ours records about its evaluation: its preprocessing
    (input size, crop, interpolation, mean/std: what its training run validated with) and a multi-label
    decision ``threshold``; files of tresnet 0.1.0 recorded the input side only (``img_size``)."""
    recorded = {k: v for k, v in (metadata.get("preprocessing") or {}).items() if k in PREPROCESSING_KEYS}
    if "input_size" not in recorded and str(metadata.get("img_size", "")).isdigit():
        recorded["input_size"] = [in_chans, int(metadata["img_size"]), int(metadata["img_size"])]
    if "input_size" in recorded:
        size = recorded["input_size"]
        if not (isinstance(size, list | tuple) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size)):
            raise CheckpointError(f"the checkpoint records an input size of {size!r}, not [channels, height, "
                                  f"width]: was the file edited?")
        recorded["input_size"] = (in_chans, *size[1:])
    recorded = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()}
    if recorded:
        recorded["preprocessing_source"] = "checkpoint"
    if metadata.get("threshold") is not None:
        recorded["threshold"] = float(metadata["threshold"])
    return recorded


def _open_classifier(path: Path, features_only: bool) -> Checkpoint:
    """The checkpoint at ``path``; :class:`ConfigError` for a detector's read as a classifier."""
    ckpt = open_checkpoint(path)
    if ckpt.metadata.get("head") in DETECTOR_HEADS and not features_only:
        raise ConfigError(f"checkpoint {ckpt.path} holds a {ckpt.metadata['head']} detector: build it with "
                          f"tresnet.create_detector(checkpoint_path=...) (or tresnet.load_network)")
    return ckpt


def _weights_file(name: str | None, pretrained: bool, checkpoint_path: str | os.PathLike | None
                  ) -> tuple[str | None, Path | None, FoundWeights | None]:
    """The model name without its tag, the weights file to load (``checkpoint_path``, or the published weights
    of ``name`` found on this machine with ``pretrained``) and where those were found.

    Unknown names fail here, before any file is touched; so does a tag without ``pretrained``.
    """
    if name is None:  # the callers refuse no name and no checkpoint_path
        return None, Path(checkpoint_path).expanduser() if checkpoint_path is not None else None, None
    model, tag = split_tag(name)
    get_pretrained_cfg(model)
    if checkpoint_path is not None:
        if tag is not None:
            raise ConfigError(f"{name} names published weights ({tag}) and a checkpoint file is given too: name the "
                              f"model {model} with a file, or the tag with pretrained=True (--pretrained)")
        return model, Path(checkpoint_path).expanduser(), None
    if not pretrained:
        if tag is not None:
            raise ConfigError(f"{name} names published weights: pass pretrained=True (--pretrained) to load them, "
                              f"or name the model {model} to build it without weights")
        return model, None, None
    found = find_pretrained(name)
    return model, found.path, found


def published_weights_cfg(found: FoundWeights) -> dict:
    """The ``pretrained_cfg`` entries of a model built with published weights: their ``tag``, timm's
    ``hf_hub_id``, where they were found (``weights_file``), and their published top-1 when the tag is not the
    model's default (None for ImageNet-21k heads)."""
    weights = found.weights
    entries: dict[str, str | float | None] = {"tag": weights.tag, "hf_hub_id": weights.hub_repo,
                                              "weights_file": str(found.path)}
    if not weights.default:
        entries["top1"] = weights.top1
    return entries


def create_model(name: str | None = None, *, pretrained: bool = False,
                 checkpoint_path: str | os.PathLike | None = None, num_classes: int | None = None,
                 in_chans: int = 3, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 features_only: bool = False, out_indices: tuple[int, ...] = (1, 2, 3, 4),
                 norm: str | None = None, memory_efficient: bool = False, head: str | None = None,
                 task: str | None = None, head_options: dict | None = None, **arch_overrides) -> nn.Module:
    """Build model ``name`` (a TResNet or a GENet, see :func:`tresnet.list_models`), optionally with weights.

    ``pretrained=True`` loads the published weights of ``name`` from this machine (never downloaded):
    ``name`` is a model (its default weights) or ``MODEL.TAG`` as timm writes it (``tresnet_m.miil_in21k_ft_in1k``;
    :func:`tresnet.weights.find_pretrained` says where it looks); ``checkpoint_path`` loads that
    file (official, timm or tresnet format, or an ASL / ML-Decoder multi-label release), read once.
    ``name`` may be left out when the checkpoint names its model (a file saved by ``tresnet train``) or
    holds a network only one model builds.
    ``num_classes=None`` means the checkpoint's number of classes, else 1000; a different number loads
    the backbone and a fresh head, with a warning.
    ``head`` is ``"fc"`` (pooling + linear) or ``"ml_decoder"`` (an ML-Decoder head, sized as published or
    as the checkpoint's); None means the checkpoint's, else ``"fc"``. ``features_only`` ignores it.
    ``head_options`` size an ML-Decoder (``num_queries``, ``embed_dim``, ``num_heads``, ``ff_dim``,
    ``dropout``: :class:`~tresnet.layers.MLDecoderHead`).
    ``task`` (``"multiclass"`` or ``"multilabel"``) is recorded in ``pretrained_cfg["task"]``; None means
    the checkpoint's (ASL and ML-Decoder releases are multi-label), else ``"multiclass"``.
    ``norm`` is the family's default when None: for TResNet ``"inplace_abn"``, or ``"inplace_abn_sync"``
    or ``"bn"`` (plain BatchNorm); GENet has ``"bn"`` only (its ReLU is not invertible).
    ``memory_efficient=True`` (TResNet only) trains with about 0.54x the activation memory of plain
    BatchNorm (0.75x without it) for a few percent more compute (In-Place ABN norms only). The weights loaded are
    recorded in ``model.checkpoint_info`` (:class:`~tresnet.checkpoint.CheckpointInfo`, None without).

    Raises :class:`~tresnet.errors.ModelNotFoundError` for an unknown name,
    :class:`~tresnet.errors.ConfigError` for a checkpoint that does not say which model it is when no
    name is given, an unknown head or task, or an option the family does not take (``memory_efficient``
    or in-place ABN for a GENet), and :class:`~tresnet.errors.CheckpointError` for a missing or
    mismatched checkpoint, or a ``head`` that contradicts it without a new ``num_classes``.

    The preprocessing (and multi-label threshold) a checkpoint of ours records replaces the registered
    model's in ``model.pretrained_cfg`` (:func:`recorded_preprocessing`), so the weights are evaluated
    as their training run validated them.
    """
    if name is None and checkpoint_path is None:
        raise ConfigError("create_model needs a model name, or a checkpoint_path whose file names its model")
    if task is not None:
        get_task(task)  # an unknown task fails before any file is touched
    name, path, found = _weights_file(name, pretrained, checkpoint_path)
    ckpt = _open_classifier(path, features_only) if path is not None else None
    name = _name_or_recorded(name, path, ckpt)
    classes = num_classes if num_classes is not None else ((ckpt and ckpt.metadata.get("num_classes")) or 1000)
    head = resolve_head(head, ckpt, num_classes=num_classes, features_only=features_only)
    task = task or (ckpt and ckpt.metadata.get("task")) or DEFAULT_TASK
    model = build_model(name, num_classes=classes, in_chans=in_chans, drop_rate=drop_rate,
                        drop_path_rate=drop_path_rate, norm=norm, features_only=features_only,
                        out_indices=out_indices, memory_efficient=memory_efficient, head=head, task=task,
                        head_options=_head_options(head, ckpt, classes, head_options), **arch_overrides)
    if ckpt is not None:
        load_state(model, ckpt, allow_head_mismatch=num_classes is not None)
        model.checkpoint_info = ckpt.info  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
        cast(dict, model.pretrained_cfg).update(recorded_preprocessing(ckpt.metadata, in_chans))
    if found is not None:
        cast(dict, model.pretrained_cfg).update(published_weights_cfg(found))
    return model


def _saved_detector(ckpt: Checkpoint, options: DetectorOptions, overrides: dict) -> Detector:
    """The detector a checkpoint of ours holds, rebuilt from its recorded configuration (the post-processing
    ``overrides`` replace the recorded ones) with its weights; its norms as ``options`` say (frozen by default)."""
    config = DetectorConfig.from_dict({**ckpt.metadata["network"], **overrides})
    body = detector_body(create_model, ckpt.metadata.get("model"), norm=ckpt.metadata.get("norm") or None)
    detector = assemble_detector(body, config, options, from_weights=True)
    missing, unexpected = detector.load_state_dict(ckpt.state_dict, strict=False)
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]  # frozen norms keep no count
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit its recorded {config.head} detector on "
                              f"{ckpt.metadata.get('model')} (missing {missing[:3]}, unexpected {unexpected[:3]}): was "
                              f"the file edited?")
    detector.checkpoint_info = ckpt.info
    detector.pretrained_cfg.update(recorded_preprocessing(ckpt.metadata))
    return detector


_POST_PROCESSING = {"score_threshold", "nms_threshold", "detections_per_image"}


def create_detector(name: str | None = None, *, head: str | None = None, num_classes: int | None = None,
                    pretrained: bool = False, checkpoint_path: str | os.PathLike | None = None,
                    norm: str | None = None, drop_path_rate: float = 0.0, **options) -> nn.Module:
    """torchvision's FCOS (``head="fcos"``, the default: the detector of the TResNet paper) or RetinaNet on the
    stride 8/16/32 features of model ``name`` (any TResNet or GENet), through a feature pyramid with P6 and P7
    (:mod:`tresnet.models.detection`).

    ``checkpoint_path`` is a detector saved by ``tresnet train --task detection`` (rebuilt as it was saved: its
    backbone, head, classes and configuration; ``name``, ``head`` and ``num_classes`` may be left out), or a
    classification checkpoint of any format :func:`create_model` reads, whose backbone starts the detector;
    ``pretrained=True`` starts it from ``name``'s cached weights. ``num_classes`` (default 80, COCO's) counts the
    classes, without a background class. ``options`` are :class:`~tresnet.models.detection.DetectorOptions`:
    ``min_size``, ``max_size``, ``fpn_channels``, ``anchor_size``, ``trainable_layers``, ``train_norms``,
    ``score_threshold``, ``nms_threshold``, ``detections_per_image`` (a saved detector takes the norms,
    trainable layers and post-processing only). The detector's ``pretrained_cfg`` records the task
    (``"detection"``), the head and its configuration (``network``).

    Raises :class:`ConfigError` for an unknown head or option, options a saved detector cannot change, and a
    bad value; :class:`CheckpointError` (and the errors of :func:`create_model`) for a missing or unfitting file.
    """
    known = {f.name for f in dataclasses.fields(DetectorOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown detector option {unknown[0]!r}: use {', '.join(sorted(known))}")
    if name is None and checkpoint_path is None:
        raise ConfigError("create_detector needs a model name, or a checkpoint_path whose file names its model")
    name, path, _ = _weights_file(name, pretrained, checkpoint_path)
    ckpt = open_checkpoint(path) if path is not None else None
    if ckpt is not None and ckpt.metadata.get("head") in DETECTOR_HEADS:
        return _saved(ckpt, name, head, num_classes, options)
    spec = NetworkSpec(_name_or_recorded(name, path, ckpt), 80 if num_classes is None else num_classes,
                       head=head, checkpoint=str(path) if path is not None else None, drop_path_rate=drop_path_rate,
                       norm=norm, options=DetectorOptions(**options))
    return DETECTION_TASK.create_network(create_model, spec)


def _saved(ckpt: Checkpoint, name: str | None, head: str | None, num_classes: int | None, options: dict) -> Detector:
    """A saved detector, refusing what would change its network."""
    meta = ckpt.metadata
    if (name not in (None, meta.get("model")) or head not in (None, meta.get("head"))
            or num_classes not in (None, meta.get("num_classes"))):
        raise ConfigError(f"{ckpt.path} holds a {meta.get('head')} detector of {meta.get('num_classes')} classes on "
                          f"{meta.get('model')}: leave the model, head and classes out (or start a new detector "
                          f"from a classification checkpoint)")
    network = {key for key in options if key not in _POST_PROCESSING | {"trainable_layers", "train_norms"}}
    if network:
        raise ConfigError(f"{sorted(network)[0]} is part of the saved detector's network: it cannot change when "
                          f"loading {ckpt.path}")
    overrides = {key: value for key, value in options.items() if key in _POST_PROCESSING and value is not None}
    kept = {key: value for key, value in options.items() if key in ("trainable_layers", "train_norms")}
    return _saved_detector(ckpt, DetectorOptions(**kept), overrides)


def load_network(name: str | None = None, *, checkpoint_path: str | os.PathLike | None = None,
                 pretrained: bool = False) -> nn.Module:
    """The network a checkpoint holds, whatever its task: a detector (:func:`create_detector`) for a file saved by a
    detection run, else the classifier :func:`create_model` builds. Raises as they do."""
    if checkpoint_path is not None and recorded_head(checkpoint_path) in DETECTOR_HEADS:
        return create_detector(name, checkpoint_path=checkpoint_path)
    return create_model(name, checkpoint_path=checkpoint_path, pretrained=pretrained)
