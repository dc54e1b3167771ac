"""``torch.hub.load`` on a clone: hubconf.py lists every registered model and builds it from the clone's sources."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import tresnet

ROOT = Path(__file__).resolve().parents[1]

LOAD = """
import importlib.util, json, sys, torch
clone = sys.argv[1]
spec = importlib.util.spec_from_file_location("hubconf", clone + "/hubconf.py")
hubconf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hubconf)
names = [n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")]  # as torch.hub.list
model = torch.hub.load(clone, "genet_light", source="local", pretrained=True, tag="idstcv_in1k").eval()
torch.manual_seed(0)
x = torch.rand(1, 3, 32, 32)
with torch.no_grad():
    logits = model(x)
import tresnet
print(json.dumps({"names": names, "package": tresnet.__file__, "tag": model.pretrained_cfg["tag"],
                  "logits": logits[0, :5].tolist(), "doc": hubconf.tresnet_m.__doc__}))
"""


def test_torch_hub_loads_every_model_from_a_clone(tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "src", clone / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "hubconf.py", clone / "hubconf.py")
    weights = tmp_path / "weights"
    torch.manual_seed(1)
    reference = tresnet.create_model("genet_light", num_classes=10).eval()
    tresnet.save_checkpoint(reference, weights / "genet_light.safetensors")
    env = dict(os.environ, TRESNET_HOME=str(weights), HF_HUB_CACHE=str(tmp_path / "hf"),
               TORCH_HOME=str(tmp_path / "torch"), PYTHONPATH="")
    done = subprocess.run([sys.executable, "-c", LOAD, str(clone)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(result["names"]) == tresnet.list_models()
    assert Path(result["package"]).is_relative_to(clone), "the clone's package was not the one imported"
    assert result["tag"] == "idstcv_in1k" and "tresnet_m: tresnet_m at 224x224" in result["doc"]
    torch.manual_seed(0)
    with torch.no_grad():
        expected = reference(torch.rand(1, 3, 32, 32))[0, :5]
    assert torch.allclose(torch.tensor(result["logits"]), expected, rtol=1e-5, atol=1e-6)
