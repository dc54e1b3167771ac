"""Data: image reading, evaluation transforms from a model's configuration, folders, multi-label annotation
files and loaders."""

from tresnet.data.class_names import class_labels, coco_class_names, imagenet_class_names
from tresnet.data.datasets import ImageFolderDataset, UnreadableImageWarning
from tresnet.data.images import IMAGE_EXTENSIONS, find_images, load_image, to_rgb
from tresnet.data.loader import create_loader
from tresnet.data.multilabel import MultiLabelDataset, open_multilabel, read_coco, read_csv
from tresnet.data.transforms import create_eval_transform

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "MultiLabelDataset", "UnreadableImageWarning", "class_labels",
           "coco_class_names", "create_eval_transform", "create_loader", "find_images", "imagenet_class_names",
           "load_image", "open_multilabel", "read_coco", "read_csv", "to_rgb"]
