"""The picture of a run, ``metrics.png``: its losses and its task's score per epoch (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

from tresnet.files import atomic_write
from tresnet.tasks import Task, get_task


def metrics_figure(history: list[dict], task: str | Task = "multiclass", train_loss: str | None = None):
    """The matplotlib figure of ``metrics.png``: the losses and the validation score (the ``task``'s metric) of
    each row of ``history`` (the rows of ``metrics.csv``), on whole-epoch ticks. ``train_loss`` names the
    training loss when it is not the validation's (ASL against BCE, a distillation loss): the two then get a
    panel each, as their scales differ. Needs matplotlib (ImportError without it)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    task = get_task(task)
    metric, val_loss = task.metric, task.validation_loss
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3 if train_loss and val_loss else 2, figsize=(14 if train_loss and val_loss else 10, 4))
    if val_loss is None:  # a task that reports no validation loss (a detector's): the training loss alone
        _plot_curves(axes[0], epochs, {"train": [row["train_loss"] for row in history]}, f"training loss ({train_loss})")
    elif train_loss:
        _plot_curves(axes[0], epochs, {"train": [row["train_loss"] for row in history]}, f"training loss ({train_loss})")
        _plot_curves(axes[1], epochs, {"val": [row["val_loss"] for row in history]}, f"validation loss ({val_loss})")
    else:
        _plot_curves(axes[0], epochs, {"train (with label smoothing)": [row["train_loss"] for row in history],
                                       "val": [row["val_loss"] for row in history]}, val_loss)
    title = task.metric_title
    scores = {f"val {title}": [100 * row[f"val_{metric}"] for row in history]}
    if any(row.get(f"ema_{metric}") is not None for row in history):
        scores[f"EMA {title}"] = [100 * (row.get(f"ema_{metric}") or float("nan")) for row in history]
    _plot_curves(axes[-1], epochs, scores, f"{title} (%)")
    fig.tight_layout()
    return fig


def write_plot(path: Path, history: list[dict], task: Task, train_loss: str | None = None) -> bool:
    """Write :func:`metrics_figure` to ``path``; False when matplotlib is not installed."""
    try:
        fig = metrics_figure(history, task, train_loss)
    except ImportError:
        return False
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return True


def _plot_curves(ax, epochs: list[int], curves: dict[str, list[float]], ylabel: str) -> None:
    """One panel of ``metrics.png``: ``curves`` (label -> a value per epoch) against whole epochs."""
    from matplotlib.ticker import MaxNLocator

    for label, values in curves.items():
        ax.plot(epochs, values, marker="o" if len(epochs) < 30 else None, markersize=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if len(curves) > 1:
        ax.legend()


__all__ = ["metrics_figure", "write_plot"]
