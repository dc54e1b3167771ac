"""GENet in the benchmark: ours against timm's gernet at one size, the deployment forms, published top-1."""

from __future__ import annotations

import json

import pytest

import tresnet
from helpers import requires_onnx, requires_timm
from tresnet.bench import BenchConfig, run_benchmark
from tresnet.bench.published import PEER_RESULTS, published_top1
from tresnet.bench.report import comparisons, format_ratios
from tresnet.bench.rows import BenchRow, ModeResult
from tresnet.bench.specs import parse_model_list, same_network_sizes, timm_name_of
from tresnet.cli.main import main

GENETS = ("genet_light", "genet_normal", "genet_large")


def test_genet_top1_comes_from_the_model_registry():
    for name in GENETS:
        cfg = tresnet.get_pretrained_cfg(name)
        ours, timms = published_top1(name), published_top1(cfg["timm_name"])
        assert (ours.top1, ours.img_size) == (cfg["top1"], cfg["input_size"][-1])
        assert (timms.top1, timms.img_size) == (cfg["timm_eval"]["top1"], cfg["timm_eval"]["img_size"])
        assert PEER_RESULTS[cfg["timm_name"]] == timms and "GENet paper" in ours.source
    # timm's results-imagenet.csv, as the registry records it
    assert [PEER_RESULTS[n].top1 for n in ("gernet_s", "gernet_m", "gernet_l")] == [76.874, 80.702, 81.354]


def test_timm_names_of_our_models():
    assert [timm_name_of(n) for n in GENETS] == ["gernet_s", "gernet_m", "gernet_l"]
    assert timm_name_of("tresnet_m") == "tresnet_m" and timm_name_of("resnet50") is None


@requires_timm
def test_a_timm_model_that_is_one_of_ours_takes_our_size():
    specs = parse_model_list("genet_light:fused,genet_light,timm:gernet_s,genet_normal,gernet_m,genet_large,"
                             "timm:gernet_l,tresnet_m,timm:tresnet_m,resnet50")
    # gernet_l (256) and tresnet_m (224) already share their size with ours; resnet50 is no one's
    assert same_network_sizes(specs) == {"timm:gernet_s": ("genet_light", 192), "gernet_m": ("genet_normal", 192)}
    assert same_network_sizes(parse_model_list("timm:gernet_s")) == {}  # alone, timm's own size


def _row(model: str, name: str, impl: str, form: str | None = None, img_per_s: float = 10.0) -> BenchRow:
    return BenchRow(model=model, name=name, impl=impl, form=form, device="cpu", device_name="cpu",
                    precision="fp32", channels_last=False, compiled=False, img_size=192,
                    infer=ModeResult(batch_size=8, img_per_s=img_per_s))


def test_ratios_pair_a_genet_with_timms_gernet():
    rows = [_row("genet_light", "genet_light", "tresnet", img_per_s=10.0),
            _row("timm:gernet_s", "gernet_s", "timm", img_per_s=10.0),
            _row("genet_light:fused", "genet_light", "tresnet", "fused", img_per_s=12.0),
            _row("gernet_m", "gernet_m", "timm"), _row("genet_normal", "genet_normal", "tresnet")]
    assert comparisons(rows) == [("genet_light", "timm:gernet_s"), ("genet_light:fused", "genet_light"),
                                 ("genet_light:fused", "timm:gernet_s"), ("genet_normal", "gernet_m")]
    assert "genet_light:fused / genet_light: infer 1.20x" in format_ratios(rows)


def test_img_size_from_is_kept_in_the_flat_form_only_when_set():
    row = _row("timm:gernet_s", "gernet_s", "timm")
    assert "img_size_from" not in row.to_dict()
    row.img_size_from = "genet_light"
    assert row.to_dict()["img_size_from"] == "genet_light" and BenchRow.from_dict(row.to_dict()) == row


@requires_timm
def test_genet_against_timm_and_fused_in_one_run(tmp_path, capsys):
    path = tmp_path / "rows.json"
    rc = main(["benchmark", "--models", "genet_light,timm:gernet_s,genet_light:fused", "--device", "cpu",
               "--batch-size", "2", "--warmup", "0", "--repeats", "1", "--no-peak-memory", "--no-progress",
               "--json", str(path)])
    captured = capsys.readouterr()
    assert rc == 0
    ours, theirs, fused = (BenchRow.from_dict(r) for r in json.loads(path.read_text()))
    assert ours.img_size == theirs.img_size == fused.img_size == 192  # GENet-light's size, not timm's 224
    assert theirs.img_size_from == "genet_light" and ours.img_size_from is None
    assert ours.params_m == pytest.approx(theirs.params_m) and ours.gmacs == pytest.approx(theirs.gmacs)
    assert ours.train.img_per_s > 0 and theirs.train.img_per_s > 0 and fused.train.img_per_s is None
    assert fused.max_rel_diff < 1e-5
    assert (ours.top1, theirs.top1, theirs.top1_img_size) == (75.7, 76.874, 224)
    assert "genet_light / timm:gernet_s: infer" in captured.out
    assert "timm:gernet_s measured at 192 px, the size of genet_light" in captured.err


@requires_timm
def test_one_img_size_for_all_overrides_the_pairing():
    ours, theirs = run_benchmark(BenchConfig(models="genet_light,timm:gernet_s", device="cpu", img_size=64,
                                             batch_size=2, warmup=0, repeats=1, mode="infer", peak_memory=False))
    assert ours.img_size == theirs.img_size == 64 and theirs.img_size_from is None


@requires_onnx
def test_genet_onnx_form_matches_the_plain_model():
    plain, onnx = run_benchmark(BenchConfig(models="genet_light,genet_light:onnx", device="cpu", img_size=64,
                                            batch_size=2, warmup=0, repeats=1, mode="infer", peak_memory=False))
    assert onnx.form == "onnx" and onnx.infer.img_per_s > 0 and plain.infer.img_per_s > 0
    assert onnx.max_rel_diff < 1e-4
