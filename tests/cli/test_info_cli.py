"""`tresnet info`: the variants table and the checkpoint round trip, from the command line."""

from __future__ import annotations

from tresnet.cli.main import main


def test_info_prints_the_table_and_round_trips(capsys):
    assert main(["info", "--models", "tresnet_m"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("tresnet_m "))
    assert "31.39" in line and "5.74" in line and "224x224" in line and "ok" in line
    assert "TResNet" in line and "80.8 @224" in line


def test_info_shows_a_genet_with_its_family_and_the_sizes_of_its_top1(capsys):
    assert main(["info", "--models", "genet_light"]) == 0
    out = capsys.readouterr().out
    assert "family" in out.splitlines()[0]
    line = next(row for row in out.splitlines() if row.startswith("genet_light "))
    assert line.split()[:5] == ["genet_light", "GENet", "8.17", "0.55", "192x192"]
    assert "75.7 @192" in line and "76.874 @224" in line and "ok" in line  # the paper's size, then timm's


def test_info_groups_the_rows_by_family(capsys):
    assert main(["info", "--models", "genet_light,tresnet_m", "--no-roundtrip"]) == 0
    rows = [row.split()[0] for row in capsys.readouterr().out.splitlines()[2:-1]]
    assert rows == ["tresnet_m", "genet_light"]


def test_info_with_no_matching_model_is_a_one_line_error(capsys):
    assert main(["info", "--models", "resnet*"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tresnet info: error: no model matches") and "\n" not in err
