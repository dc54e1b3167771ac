"""A benchmark row: what was measured for one model, with one record per mode, and its flat JSON/CSV form.

:class:`BenchRow` is what :func:`tresnet.bench.run_benchmark` returns; ``row.mode("infer")`` (or
``row.infer``) holds one mode's batch, speed and memory. :meth:`BenchRow.to_dict` gives the flat form
the result files use (``infer_img_per_s``, ``train_batch_size``, ...) and :meth:`BenchRow.from_dict`
reads it back, so files written before rows were dataclasses still load.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

MODES = ("infer", "train")
# Flat keys in the order of the result files: identity and static costs first, settings and versions later.
_HEAD = ("model", "name", "impl", "form", "device", "device_name", "precision", "channels_last", "compiled",
         "img_size", "params_m", "gmacs", "saved_mib_per_img", "saved_constant_mib", "top1", "top1_img_size",
         "top1_source")
_SETTINGS = ("tresnet_version", "torch_version", "timm_version", "warmup", "repeats", "iters", "threads", "timer")
# Set in a run that compares speeds with the compute ceiling (tresnet.bench.ceiling); written only then.
_COMPUTE = ("number_format", "peak_gflop_per_s", "peak_source", "probe_gflop_per_s", "infer_gflop_per_s",
            "infer_peak_fraction")


@dataclass
class ModeResult:
    """One mode's figures in a row; all None when the mode was not run.

    ``img_per_s`` is the median over the timed turns, ``img_per_s_spread_pct`` their interquartile
    range in percent of it; ``max_batch`` the largest batch that fits (when searched); ``peak_mem_mib``
    the peak memory (CPU: of a process running the model; CUDA: allocated during the timed steps).
    """

    batch_size: int | None = None
    img_per_s: float | None = None
    img_per_s_spread_pct: float | None = None
    ms_per_batch: float | None = None
    seconds_per_batch: list[float] | None = None
    max_batch: int | None = None
    peak_mem_mib: float | None = None

    @property
    def timed(self) -> bool:
        """Whether this mode was timed."""
        return self.seconds_per_batch is not None


@dataclass
class BenchRow:
    """Everything measured for one model in one run: identity and settings, per-mode results, static costs.

    Static costs: ``params_m`` (millions), ``gmacs`` (one image at ``img_size``), ``saved_mib_per_img``
    (activations autograd keeps for backward, per image: the slope between two batches) and
    ``saved_constant_mib`` (what it keeps once per step, e.g. autocast's copies of the weights). ``top1`` is
    the published ImageNet top-1 (``top1_source`` says where from). ``max_rel_diff``: for a form derived from the plain model (``NAME:fused``,
    ``NAME:onnx``), its largest logit difference from the plain eval model on the benchmark's inputs,
    relative to the plain logits' largest magnitude. ``cpu_flags``: the CPU's speed-relevant ISA flags.
    ``img_size_from``: the model of the run whose input side this row was measured at instead of its own (a
    timm model that is the same network as one of ours is measured at ours', so that the pair compares).
    Compute (:mod:`tresnet.bench.ceiling`): ``number_format``, ``peak_gflop_per_s`` (the ceiling) and
    ``peak_source``, ``probe_gflop_per_s`` (the probes' rate, when measured), ``infer_gflop_per_s`` and
    ``infer_peak_fraction``.
    """

    model: str
    name: str
    impl: str
    form: str | None
    device: str
    device_name: str
    precision: str
    channels_last: bool
    compiled: bool
    img_size: int
    params_m: float | None = None
    gmacs: float | None = None
    saved_mib_per_img: float | None = None
    saved_constant_mib: float | None = None
    top1: float | None = None
    top1_img_size: int | None = None
    top1_source: str | None = None
    infer: ModeResult = field(default_factory=ModeResult)
    train: ModeResult = field(default_factory=ModeResult)
    peak_mem_method: str | None = None
    memory_budget_gib: float | None = None
    batch_search_probes: list[list[float | None]] | None = None
    peak_mem_runtime_mib: float | None = None
    tresnet_version: str | None = None
    torch_version: str | None = None
    timm_version: str | None = None
    warmup: int | None = None
    repeats: int | None = None
    iters: int | None = None
    threads: int | None = None
    timer: str | None = None
    max_rel_diff: float | None = None
    cpu_flags: list[str] | None = None
    img_size_from: str | None = None
    number_format: str | None = None
    peak_gflop_per_s: float | None = None
    peak_source: str | None = None
    probe_gflop_per_s: float | None = None
    infer_gflop_per_s: float | None = None
    infer_peak_fraction: float | None = None

    def mode(self, name: str) -> ModeResult:
        """The :class:`ModeResult` of ``name`` (``"infer"`` or ``"train"``); ValueError for another name."""
        if name not in MODES:
            raise ValueError(f"bad mode {name!r}: infer or train")
        return self.infer if name == "infer" else self.train

    @property
    def timed_modes(self) -> tuple[str, ...]:
        """The modes that were timed, in the order infer, train."""
        return tuple(m for m in MODES if self.mode(m).timed)

    def to_dict(self) -> dict[str, Any]:
        """The flat form of the result files: ``{mode}_batch_size``, ``{mode}_img_per_s``, ``max_{mode}_batch``...

        ``batch_search_probes`` and ``peak_mem_runtime_mib`` appear only when measured, a mode's spread, ms and
        seconds only when it was timed, as in the files written before rows were dataclasses; ``img_size_from``
        and the compute figures only when set.
        """
        out = {key: getattr(self, key) for key in _HEAD}
        for m in MODES:
            out.update({f"{m}_batch_size": self.mode(m).batch_size, f"{m}_img_per_s": self.mode(m).img_per_s})
        out.update({f"max_{m}_batch": self.mode(m).max_batch for m in ("train", "infer")})
        out.update({f"{m}_peak_mem_mib": self.mode(m).peak_mem_mib for m in MODES})
        out.update(peak_mem_method=self.peak_mem_method, memory_budget_gib=self.memory_budget_gib)
        for key in ("batch_search_probes", "peak_mem_runtime_mib"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update({key: getattr(self, key) for key in _SETTINGS})
        for m in self.timed_modes:
            result = self.mode(m)
            out.update({f"{m}_img_per_s_spread_pct": result.img_per_s_spread_pct,
                        f"{m}_ms_per_batch": result.ms_per_batch, f"{m}_seconds_per_batch": result.seconds_per_batch})
        out.update(max_rel_diff=self.max_rel_diff, cpu_flags=self.cpu_flags)
        if self.img_size_from is not None:
            out["img_size_from"] = self.img_size_from
        if self.number_format is not None:
            out.update({key: getattr(self, key) for key in _COMPUTE})
        return out

    @classmethod
    def from_dict(cls, flat: Mapping[str, Any]) -> BenchRow:
        """The row of a flat dict (:meth:`to_dict`, or a result file); unknown keys are ignored."""
        modes: dict[str, Any] = {
            m: ModeResult(**{f.name: flat.get(_flat_key(m, f.name)) for f in fields(ModeResult)}) for m in MODES}
        own: dict[str, Any] = {f.name: flat.get(f.name) for f in fields(cls) if f.name not in MODES}
        return cls(**own, **modes)


def _flat_key(mode: str, name: str) -> str:
    return f"max_{mode}_batch" if name == "max_batch" else f"{mode}_{name}"


def as_rows(rows: Iterable[BenchRow | Mapping[str, Any]]) -> list[BenchRow]:
    """``rows`` as :class:`BenchRow` objects (flat dicts, e.g. read from a result file, are converted)."""
    return [row if isinstance(row, BenchRow) else BenchRow.from_dict(row) for row in rows]
