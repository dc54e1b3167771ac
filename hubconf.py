"""torch.hub entry points: one per registered model, named as :func:`tresnet.list_models` names them.

    model = torch.hub.load("path/to/tresnet", "tresnet_m", source="local", pretrained=True)

``pretrained=True`` loads published weights already on this machine, never downloaded (our cache, the Hugging
Face cache where timm leaves them, the torch.hub checkpoints folder); ``tag`` picks a set of published weights
(``tag="miil_in21k_ft_in1k"``). Other keywords go to :func:`tresnet.create_model`. A clone needs no install: the
package is imported from its ``src`` folder.
"""

from __future__ import annotations

import sys as _sys
from collections.abc import Callable as _Callable
from pathlib import Path as _Path

# Names without an underscore are entry points to torch.hub (torch.hub.list shows every public callable).
_SOURCE = _Path(__file__).resolve().parent / "src"
if (_SOURCE / "tresnet").is_dir() and str(_SOURCE) not in _sys.path:
    _sys.path.insert(0, str(_SOURCE))  # this clone's package comes before an installed one

import torch.nn as _nn  # noqa: E402

import tresnet as _tresnet  # noqa: E402

dependencies = ["torch", "torchvision", "safetensors", "yaml", "PIL", "numpy", "tqdm"]


def _entry_point(name: str) -> _Callable[..., _nn.Module]:
    """The torch.hub entry point of registered model ``name``."""
    cfg = _tresnet.get_pretrained_cfg(name)

    def build(pretrained: bool = False, tag: str | None = None, **kwargs) -> _nn.Module:
        return _tresnet.create_model(f"{name}.{tag}" if tag else name, pretrained=pretrained, **kwargs)

    build.__name__ = build.__qualname__ = name
    size = "x".join(map(str, cfg["input_size"][1:]))
    build.__doc__ = (f"{name}: {cfg['arch']} at {size}, ImageNet top-1 {cfg['top1']} (published).\n\n"
                     f"pretrained=True loads its published weights from this machine (tag= picks a set: "
                     f"`tresnet info --weights`); other keywords go to tresnet.create_model.")
    return build


for _name in _tresnet.list_models():
    globals()[_name] = _entry_point(_name)
