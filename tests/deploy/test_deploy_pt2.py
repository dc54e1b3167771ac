"""PT2 export (a torch.export ExportedProgram): checked against float64 at two batch sizes, loaded back by
torch.export.load, recording its preprocessing; a broken file is refused with nothing written; the command line and
the benchmark's NAME:pt2."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

import tresnet
from helpers import max_rel_diff, randomize_norms, tiny_bench_config
from tresnet.bench import run_benchmark
from tresnet.bench.specs import BuildOptions, parse_model_spec
from tresnet.bench.targets import check_spec
from tresnet.cli.main import main
from tresnet.deploy import ExportError, ExportMismatchError, export_model, load_pt2, read_pt2_metadata
from tresnet.deploy.detection_export import export_detector
from tresnet.errors import ConfigError
from tresnet.layers import ConvNormAct

SIZE = 64


@pytest.fixture(scope="module")
def genet() -> nn.Module:
    return randomize_norms(tresnet.create_model("genet_light", num_classes=10), signed=True).eval()


def _tiny() -> nn.Module:
    """A two-unit network of tresnet layers: enough for the paths that fail before or after exporting."""
    return randomize_norms(nn.Sequential(ConvNormAct(3, 8, 3, 2, anti_alias=True),
                                         ConvNormAct(8, 4, 1, 1, "identity", 0.0))).eval()


def test_pt2_matches_pytorch_at_any_batch_and_records_its_preprocessing(genet, tmp_path):
    path = tmp_path / "genet.pt2"
    report = export_model(genet, path, format="pt2", img_size=SIZE, dynamic_batch=True)
    assert report.path == path and path.is_file() and report.format == "pt2" and report.opset is None
    assert report.batch_sizes == (1, 3) and report.max_rel_diff <= report.limit
    assert report.limit == pytest.approx(max(1e-5, 10 * report.fp32_error))  # the fp32 bound

    # Independently of the export's own check: the file as a user loads it, at batches it was not checked at.
    with open(path, "rb") as file:
        module = torch.export.load(file).module()
    for batch in (1, 5):
        x = torch.rand(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            got, want = module(x), genet(x)
        assert got.shape == (batch, 10) and max_rel_diff(got, want) <= 1e-4

    recorded = read_pt2_metadata(path, "tresnet_preprocessing")
    assert recorded == report.preprocessing and recorded["img_size"] == [SIZE, SIZE]
    assert read_pt2_metadata(path, "not_recorded") is None


def test_bf16_pt2_takes_and_returns_fp32_within_its_bound(tmp_path):
    report = export_model(_tiny(), tmp_path / "tiny.pt2", format="pt2", img_size=16, number_format="bf16")
    assert report.batch_sizes == (1,) and report.max_rel_diff <= report.limit == pytest.approx(5e-2)
    out = load_pt2(report.path)(torch.rand(1, 3, 16, 16))
    assert out.dtype == torch.float32


def test_a_mismatch_fails_loudly_and_writes_nothing(monkeypatch, tmp_path):
    export_module = sys.modules["tresnet.deploy.export"]
    real_run = export_module.run_program
    monkeypatch.setattr(export_module, "run_program",
                        lambda path, inputs: [[o + 0.1 for o in outs] for outs in real_run(path, inputs)])
    with pytest.raises(ExportMismatchError, match="exported pt2 model .*nothing was written"):
        export_model(_tiny(), tmp_path / "m.pt2", format="pt2", img_size=16, dynamic_batch=True)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file


def test_an_exporter_refusal_is_one_export_error(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression Eq(u0, 1)\n\nmore context\n\n"
                           "The error above occurred when calling torch.export.export.")

    monkeypatch.setattr(torch.export, "export", refuse)
    with pytest.raises(ExportError, match="^pt2 export of Sequential failed: Could not guard on data-dependent "
                                          r"expression Eq\(u0, 1\)$"):
        export_model(_tiny(), tmp_path / "m.pt2", format="pt2", img_size=16)
    assert list(tmp_path.iterdir()) == []


def test_what_pt2_does_not_hold_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="int8 export writes ONNX"):
        export_model(_tiny(), tmp_path / "m.pt2", format="pt2", img_size=16, number_format="int8")
    with pytest.raises(ConfigError, match="a detector exports as --format onnx or torchscript"):
        export_detector(None, tmp_path / "det.pt2", format="pt2")  # refused before the detector is looked at
    with pytest.raises(ExportError, match=r"give a file path such as .*model\.pt2"):
        export_model(_tiny(), tmp_path, format="pt2", img_size=16)


def test_cli_exports_pt2_and_says_where_the_preprocessing_is(tmp_path, capsys):
    out = tmp_path / "genet.pt2"
    rc = main(["export", "--model", "genet_light", "--format", "pt2", "--output", str(out), "--img-size", "64",
               "--dynamic-batch"])
    printed = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert f"wrote {out} (pt2, fused, fp32, 64x64, dynamic batch); at batch 1, 3 its outputs are" in printed
    assert "the file records it in its extra file 'tresnet_preprocessing.json'" in printed
    assert json.dumps(read_pt2_metadata(out, "tresnet_preprocessing")["img_size"]) == "[64, 64]"


def test_cli_refuses_int8_pt2_in_one_line(tmp_path, capsys):
    args = ["export", "--model", "genet_light", "--format", "pt2", "--output", str(tmp_path / "m.pt2"),
            "--number-format", "int8", "--calibration", str(tmp_path)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("tresnet export: error: int8 export writes ONNX") and err.count("\n") == 1


def test_benchmark_pt2_runs_the_exported_program_beside_the_plain_model():
    plain, pt2 = run_benchmark(tiny_bench_config("genet_light,genet_light:pt2", mode="infer", peak_gflops="fp32=100"))
    assert pt2.form == "pt2" and pt2.infer.img_per_s > 0 and pt2.number_format == "fp32"
    assert pt2.max_rel_diff < 1e-4 and plain.max_rel_diff is None
    assert pt2.gmacs == pytest.approx(plain.gmacs)


def test_benchmark_pt2_runs_on_the_cpu_in_fp32_only():
    spec = parse_model_spec("genet_light:pt2")
    with pytest.raises(ConfigError, match="on the CPU, not on cuda.*use --device cpu"):
        check_spec(spec, BuildOptions(device=torch.device("cuda")))
    with pytest.raises(ConfigError, match="runs in fp32 .*not bf16: use --precision fp32"):
        check_spec(spec, BuildOptions(device=torch.device("cpu"), precision="bf16"))


@pytest.mark.slow
def test_aoti_compiles_the_program_checks_it_and_records_its_preprocessing(tmp_path):
    # the only test that compiles C++ (AOTInductor): a two-unit network, 16 px
    model = _tiny()
    model.pretrained_cfg = dict(tresnet.create_model("genet_light", num_classes=3).pretrained_cfg)
    path = tmp_path / "tiny_aoti.pt2"
    report = export_model(model, path, format="aoti", img_size=16, dynamic_batch=True)
    assert report.format == "aoti" and report.batch_sizes == (1, 3) and report.max_rel_diff <= report.limit
    compiled = torch._inductor.aoti_load_package(str(path))
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        assert max_rel_diff(compiled(x), model(x)) <= 1e-4
    assert json.loads(compiled.get_metadata()["tresnet_preprocessing"]) == report.preprocessing
    assert read_pt2_metadata(path, "tresnet_preprocessing") == report.preprocessing
