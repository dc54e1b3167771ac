"""The model part of a run: the network the run's task builds (its init weights, a head for the data's classes,
sh-kd's frozen head) with its norm layers chosen for the process group, on the device; distillation's teacher;
and the DDP wrapper of what trains (the model, or th-kd's model and teacher head)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from tresnet.collectives import DistInfo
from tresnet.errors import ConfigError
from tresnet.factory import create_model
from tresnet.tasks import NetworkSpec, get_task
from tresnet.training import distributed
from tresnet.training.config import TrainConfig
from tresnet.training.distill import (
    Distiller,
    create_distiller,
    frozen_head_source,
    install_frozen_head,
    install_saved_frozen_head,
    saved_frozen_head_kind,
)
from tresnet.training.distributed import derive_seed
from tresnet.training.rng import seed_everything
from tresnet.training.run_files import say
from tresnet.training.sections import ModelSection


@dataclass
class ModelSetup:
    """The model of a run, its distiller (None without distillation), what trains (``trained``: the model, or the
    student with th-kd's head) and its DDP wrapper (None in one process), with the norm layers chosen."""

    model: nn.Module
    distiller: Distiller | None
    trained: nn.Module
    ddp: nn.Module | None
    norm: str
    sync_plain_bn: bool

    def describe_norm(self) -> str:
        norm = f"{self.norm} (synchronised)" if self.sync_plain_bn else str(self.norm)
        return norm + (", memory-efficient tails" if getattr(self.model, "memory_efficient", False) else "")


def _choose_norms(cfg: ModelSection, info: DistInfo) -> tuple[str, bool]:
    """The norm for :func:`tresnet.create_model`, and whether plain BN becomes torch's ``SyncBatchNorm``: under
    DDP with ``sync_bn``, In-Place ABN becomes ``inplace_abn_sync`` and plain BN ``SyncBatchNorm`` (after the model
    is built), which runs on GPUs only: on the CPU plain BN stays per process."""
    sync = info.distributed and cfg.sync_bn
    norm = "inplace_abn_sync" if sync and cfg.norm == "inplace_abn" else cfg.norm
    sync_plain_bn = sync and cfg.norm == "bn" and info.device.type != "cpu"
    if sync and cfg.norm == "bn" and not sync_plain_bn:
        say(info, "note: BN statistics stay per process on the CPU (torch's SyncBatchNorm needs a GPU; "
                  "--no-sync-bn silences this)")
    return norm, sync_plain_bn


def _frozen_head(cfg: TrainConfig, class_names: list[str], resume_state: dict | None) -> tuple[nn.Module | None,
                                                                                               str | None]:
    """sh-kd (``frozen_head_from``): the student whose classifier is copied in (None when resuming: the saved
    model holds the copy), and the head kind to build; otherwise ``(None, cfg.model.head)``."""
    student, head = cfg.distillation.frozen_head_from, cfg.model.head
    if student is None:
        return None, head
    if resume_state is not None:
        return None, head or saved_frozen_head_kind(resume_state["model"])
    source = frozen_head_source(student, class_names, cfg.task.name)
    kind = source.pretrained_cfg.get("head", "fc")
    if head is not None and head != kind:
        raise ConfigError(f"the student checkpoint {student} has an {kind!r} head, and --head is "
                          f"{head!r}: the frozen head is the student's, so leave --head out")
    return source, kind


def _network(cfg: TrainConfig, info: DistInfo, class_names: list[str], img_size: int, norms: tuple[str, bool],
             resume_state: dict | None) -> nn.Module:
    """The network with its init weights (none when resuming: the saved state follows), its norms (``norms``:
    the norm and whether plain BN is synchronised) and its head."""
    norm, sync_plain_bn = norms
    seed_everything(derive_seed(cfg.run.seed, 0))
    head_source, head = _frozen_head(cfg, class_names, resume_state)
    options, task = cfg.model, get_task(cfg.task.name)
    spec = NetworkSpec(options.name, len(class_names), head=head, drop_rate=options.drop_rate,
                       checkpoint=options.init_checkpoint if resume_state is None else None,
                       drop_path_rate=options.drop_path, norm=norm, memory_efficient=options.memory_efficient,
                       img_size=img_size,
                       options=getattr(cfg, task.section) if task.section else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = task.create_network(create_model, spec)
    for w in caught:
        say(info, f"note: {w.message}")
    if sync_plain_bn:
        distributed.sync_batch_norm(model)
    if head_source is not None:
        install_frozen_head(model, head_source)
    elif resume_state is not None:
        install_saved_frozen_head(model, resume_state["model"])
    return model


def build_model_setup(cfg: TrainConfig, info: DistInfo, class_names: list[str], img_size: int,
                      criterion: nn.Module, resume_state: dict | None) -> ModelSetup:
    """The model part of a run on ``info``'s device (``criterion``: the task's loss, which distillation adds its
    terms to); ``resume_state`` restores sh-kd's frozen head and the distiller's state when resuming.

    Raises :class:`ConfigError` and :class:`~tresnet.errors.CheckpointError` as :func:`tresnet.create_model` and
    the distillation's loaders do."""
    device = info.device
    norm, sync_plain_bn = _choose_norms(cfg.model, info)
    model = _network(cfg, info, class_names, img_size, (norm, sync_plain_bn), resume_state)
    model.to(device)
    if cfg.run.channels_last:
        model.to(memory_format=torch.channels_last)
    distiller = None
    if cfg.distillation.method is not None:
        distiller = create_distiller(cfg.distillation, cfg.task.name, class_names, model, criterion, img_size, device,
                                     channels_last=cfg.run.channels_last, saved=(resume_state or {}).get("distill"))
    trained = distiller.student_net(model) if distiller is not None else model
    ddp = None
    if info.distributed:
        ddp = nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=not (norm == "inplace_abn_sync" or sync_plain_bn))
    return ModelSetup(model, distiller, trained, ddp, norm, sync_plain_bn)


__all__ = ["ModelSetup", "build_model_setup"]
