"""`tresnet info`: the variants table from the cached counts, and the checkpoint round trip on request."""

from __future__ import annotations

import json

import pytest

from tresnet.bench.costs import CACHE_FILE
from tresnet.cli.main import main


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test counts into its own cache folder, never the user's."""
    monkeypatch.setenv("TRESNET_HOME", str(tmp_path))


def _row(out: str, name: str) -> str:
    return next(row for row in out.splitlines() if row.startswith(f"{name} "))


def test_info_prints_the_table_without_a_round_trip(capsys):
    assert main(["info", "--models", "tresnet_m"]) == 0
    out = capsys.readouterr().out
    line = _row(out, "tresnet_m")
    assert "31.39" in line and "5.74" in line and "224x224" in line
    assert "TResNet" in line and "80.8 @224" in line
    assert "round trip" not in out and "ok" not in line


def test_info_check_round_trips_each_model(capsys):
    assert main(["info", "--models", "genet_light", "--check"]) == 0
    out = capsys.readouterr().out
    assert "round trip" in out.splitlines()[0]
    line = _row(out, "genet_light")
    assert line.split()[:5] == ["genet_light", "GENet", "8.17", "0.55", "192x192"]
    assert "75.7 @192" in line and "76.874 @224" in line  # the paper's size, then timm's
    assert line.split()[-3] == "ok" and line.endswith(" s)")


def test_info_reads_the_counts_from_its_cache(tmp_path, capsys):
    assert main(["info", "--models", "genet_light"]) == 0
    capsys.readouterr()
    cache = tmp_path / CACHE_FILE
    record = json.loads(cache.read_text())
    assert record["models"]["genet_light"]["img_size"] == 192
    record["models"]["genet_light"]["params_m"] = 1234.5  # what a run of the same code would find there
    cache.write_text(json.dumps(record))
    assert main(["info", "--models", "genet_light"]) == 0
    assert "1234.50" in _row(capsys.readouterr().out, "genet_light")
    record["fingerprint"] = "other code"  # counts of another version are counted again
    cache.write_text(json.dumps(record))
    assert main(["info", "--models", "genet_light"]) == 0
    assert "8.17" in _row(capsys.readouterr().out, "genet_light")


def test_info_groups_the_rows_by_family(capsys):
    assert main(["info", "--models", "genet_light,tresnet_m"]) == 0
    rows = [row.split()[0] for row in capsys.readouterr().out.splitlines()[2:-1]]
    assert rows == ["tresnet_m", "genet_light"]


def test_the_old_no_roundtrip_flag_is_gone(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["info", "--no-roundtrip"])
    assert stopped.value.code == 2 and "unrecognized arguments: --no-roundtrip" in capsys.readouterr().err


def test_info_with_no_matching_model_is_a_one_line_error(capsys):
    assert main(["info", "--models", "resnet*"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tresnet info: error: no model matches") and "\n" not in err
