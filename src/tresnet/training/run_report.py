"""What a run tells: the line that announces it, and its summary (``summary.json``), read from a
:class:`~tresnet.training.trainer.Trainer`'s parts."""

from __future__ import annotations

from typing import Any

from tresnet.training.run_files import say


def announce(trainer: Any) -> None:
    """Print what the run trains, on what, how, and where it writes (the main process only)."""
    cfg, info, task, model = trainer.cfg, trainer.info, trainer.task, trainer.model
    opt, distillation = cfg.optimisation, cfg.distillation
    n_params = sum(p.numel() for p in model.parameters())
    precision = f", precision {cfg.run.precision}" if cfg.run.precision != "fp32" else ""
    described = task.describe(cfg.loss.name or task.default_loss)
    head = ", ML-Decoder head" if model.pretrained_cfg.get("head") == "ml_decoder" else ""
    say(info, f"training {cfg.model.name} ({n_params / 1e6:.1f}M parameters{head}) on {described}"
              f"{trainer.data.description}; {opt.epochs} epochs x {trainer.loaders.steps_per_epoch} steps of "
              f"{opt.batch_size}{f' x {info.world_size} processes' if info.distributed else ''}, {opt.optimizer} "
              f"{opt.schedule} lr {opt.lr:g}{precision}, norm {trainer.setup.describe_norm()}, inputs "
              f"{trainer.inputs}, device {trainer.device}; writing to {trainer.output}")
    if trainer.distiller is not None:
        weights = f"weight {distillation.weight:g}" + (
            f", teacher-head weight {distillation.teacher_head_weight:g}" if distillation.method == "th-kd" else "")
        say(info, f"distilling ({distillation.method}, T {distillation.temperature:g}, {weights}) from "
                  f"{trainer.distiller.teacher_name}")
    if distillation.frozen_head_from:
        say(info, f"classifier copied from {distillation.frozen_head_from} and frozen (sh-kd)")


def run_summary(trainer: Any, session_seconds: float) -> dict:
    """The run's summary: the best and final scores of its task's metric, its speed and settings."""
    cfg, history, best, metric = trainer.cfg, trainer.history, trainer.best, trainer.task.metric
    train_images = sum(row["train_images"] for row in history)
    train_seconds = sum(row["train_seconds"] for row in history)
    last = history[-1] if history else {}
    return {
        f"best_{metric}": best["score"],
        "best_epoch": best["epoch"],
        "best_weights": best["weights"],
        f"final_{metric}": last.get(f"val_{metric}"),
        f"final_ema_{metric}": last.get(f"ema_{metric}"),
        "epochs": len(history),
        "images_per_s": train_images / train_seconds if train_seconds else None,
        "seconds": sum(row["epoch_seconds"] for row in history),
        "session_seconds": session_seconds,
        "model": cfg.model.name,
        "task": cfg.task.name,
        "data": str(cfg.data.train),
        "data_description": trainer.data.description,
        "num_classes": len(trainer.data.class_names),
        "img_size": trainer.img_size,
        "precision": cfg.run.precision,
        "world_size": trainer.info.world_size,
        "device": str(trainer.device),
        **_distill_summary(trainer),
    }


def _distill_summary(trainer: Any) -> dict:
    distillation = trainer.cfg.distillation
    if trainer.distiller is None:
        return {"frozen_head_from": distillation.frozen_head_from} if distillation.frozen_head_from else {}
    return {"distill": distillation.method, "teacher": trainer.distiller.teacher_name,
            f"teacher_{trainer.task.metric}": trainer.teacher_score}


__all__ = ["announce", "run_summary"]
