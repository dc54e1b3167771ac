"""tresnet: the TResNet family of GPU-dedicated image classifiers, in pure PyTorch."""

from tresnet.checkpoint import load_checkpoint, save_checkpoint
from tresnet.factory import create_model
from tresnet.models import get_pretrained_cfg, list_models
from tresnet.version import __version__

__all__ = ["__version__", "create_model", "get_pretrained_cfg", "list_models", "load_checkpoint",
           "save_checkpoint"]
