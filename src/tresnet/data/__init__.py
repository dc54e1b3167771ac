"""Data: image reading, evaluation transforms from a model's configuration, folders and loaders."""

from tresnet.data.class_names import class_labels, imagenet_class_names
from tresnet.data.datasets import ImageFolderDataset, UnreadableImageWarning
from tresnet.data.images import IMAGE_EXTENSIONS, find_images, load_image, to_rgb
from tresnet.data.loader import create_loader
from tresnet.data.transforms import create_eval_transform

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "UnreadableImageWarning", "class_labels",
           "create_eval_transform", "create_loader", "find_images", "imagenet_class_names", "load_image", "to_rgb"]
