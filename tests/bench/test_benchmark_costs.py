"""Parameters and GMACs of the registered models: counted on the meta device as on the CPU, and cached."""

from __future__ import annotations

import json

import pytest

import tresnet
from tresnet.bench.costs import ModelCosts, code_fingerprint, count_model_costs, model_costs
from tresnet.bench.targets import count_gmacs, count_params_m


def test_counting_on_the_meta_device_gives_the_cpu_count():
    costs = count_model_costs("genet_light")
    model = tresnet.create_model("genet_light")
    assert costs.img_size == 192
    assert costs.params_m == pytest.approx(count_params_m(model))
    assert costs.gmacs == pytest.approx(count_gmacs(model, 192), rel=1e-9)


def test_counts_are_cached_under_the_code_fingerprint(tmp_path):
    cache = tmp_path / "costs.json"
    first = dict(model_costs(["genet_light"], cache=cache))
    record = json.loads(cache.read_text())
    assert record["fingerprint"] == code_fingerprint() and list(record["models"]) == ["genet_light"]
    record["models"]["genet_light"]["gmacs"] = 99.0
    cache.write_text(json.dumps(record))
    assert dict(model_costs(["genet_light"], cache=cache))["genet_light"] == ModelCosts(
        params_m=first["genet_light"].params_m, gmacs=99.0, img_size=192)


def test_without_a_cache_or_with_one_that_cannot_be_used_every_model_is_counted(tmp_path):
    assert [name for name, _ in model_costs(["genet_light"], cache=None)] == ["genet_light"]
    assert list(tmp_path.iterdir()) == []
    folder = tmp_path / "a_folder"  # neither readable nor writable as a file
    folder.mkdir()
    (costs,) = [c for _, c in model_costs(["genet_light"], cache=folder)]
    assert costs.img_size == 192 and folder.is_dir()
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    (costs,) = [c for _, c in model_costs(["genet_light"], cache=garbled)]
    assert costs.params_m > 8 and json.loads(garbled.read_text())["fingerprint"] == code_fingerprint()
