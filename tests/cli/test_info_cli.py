"""`tresnet info`: the variants table and the checkpoint round trip, from the command line."""

from __future__ import annotations

from tresnet.cli.main import main


def test_info_prints_the_table_and_round_trips(capsys):
    assert main(["info", "--models", "tresnet_m"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("tresnet_m "))
    assert "31.39" in line and "5.74" in line and "224x224" in line and "ok" in line


def test_info_with_no_matching_model_is_a_one_line_error(capsys):
    assert main(["info", "--models", "resnet*"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tresnet info: error: no model matches") and "\n" not in err
