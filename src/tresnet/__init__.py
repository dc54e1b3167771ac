"""tresnet: the TResNet family of GPU-dedicated image classifiers, and detectors on them, in pure PyTorch."""

from tresnet.checkpoint import load_checkpoint, save_checkpoint
from tresnet.factory import create_detector, create_model, load_network
from tresnet.models import get_pretrained_cfg, list_models
from tresnet.version import __version__

__all__ = ["__version__", "create_detector", "create_model", "get_pretrained_cfg", "list_models", "load_checkpoint",
           "load_network", "save_checkpoint"]
