"""The sections of a training configuration, one dataclass each, read by the part of the run that owns it:

- ``task``: what is learnt (:mod:`tresnet.tasks`) and its decision threshold;
- ``model``: the network built (:mod:`tresnet.training.model_setup`);
- ``data``: where the images and labels come from and how validation sees them (:mod:`tresnet.data.sources`);
- ``augmentation``: what training images go through (:mod:`tresnet.training.run_data`);
- ``optimisation``: length, batch, optimiser, schedule, clipping and EMA (:mod:`tresnet.training.optimisation`);
- ``loss``: the task's loss and its parameters;
- ``detection``: how a detector is put around the backbone (:mod:`tresnet.models.detection`);
- ``distillation``: kd, th-kd and sh-kd (:mod:`tresnet.training.distill`);
- ``run``: where and how the run happens (output, device, seed, precision, threads, progress).

Every field is also a ``tresnet train`` option, named by its ``option`` (the field's name unless it says
otherwise: ``model.name`` is ``--model``, ``loss.reduction`` is ``--loss-reduction``). Option names are unique
across sections, which is what lets ``--lr`` stay ``--lr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from tresnet.data.published import PUBLISHED_SETS
from tresnet.data.train_transforms import AUTO_AUGMENTS, ERASE_MODES, TRAIN_CROP_MODES, Augmentation
from tresnet.data.transforms import CROP_MODES
from tresnet.layers import NORMS as LAYER_NORMS
from tresnet.models.detection import DETECTOR_HEADS, DetectorOptions
from tresnet.models.registry import HEADS
from tresnet.runtime import PRECISIONS
from tresnet.tasks import DEFAULT_TASK, DEFAULT_THRESHOLD
from tresnet.tasks.losses import REDUCTIONS
from tresnet.training.optim import OPTIMIZERS, SCHEDULES

DISTILL_METHODS = ("kd", "th-kd")
# The norms a run may choose; distributed runs switch in-place ABN to its synchronised form themselves.
NORMS = tuple(norm for norm in LAYER_NORMS if norm != "inplace_abn_sync")
_PER_IMAGE = Augmentation()  # the per-image augmentation's defaults are the section's


def _opt(help_text: str, default: Any = None, *, choices: tuple | None = None, option: str | None = None,
         factory=None) -> Any:
    """A field with its help, its choices and its option name (None: the field's own name)."""
    metadata = {"help": help_text, "choices": choices, "option": option}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TaskSection:
    """What is learnt."""

    name: str = _opt("a registered task: multiclass (one class per image), multilabel (any set of classes per "
                     "image) or detection (boxes)", DEFAULT_TASK, option="task")
    threshold: float = _opt("multilabel: a label is predicted above this probability (CP/CR/CF1/OP/OR/OF1)",
                            DEFAULT_THRESHOLD)


@dataclass
class ModelSection:
    """The network: its name, its start, its size and its regularisation."""

    name: str = _opt("model name, e.g. tresnet_m, tresnet_l, tresnet_xl, tresnet_v2_l", "tresnet_m",
                     option="model")
    init_checkpoint: str | None = _opt(
        "start from these weights (official, timm or tresnet file); a new head when the classes differ")
    img_size: int | None = _opt("training and validation image side (default: the model's)")
    head: str | None = _opt("the head on the backbone: a classifier, fc (pooling + linear) or ml_decoder (ML-Decoder) "
                            "(default: the --init-checkpoint's, else fc); a detector, fcos (default) or retinanet",
                            choices=(*HEADS, *DETECTOR_HEADS))
    drop_path: float = _opt("stochastic depth rate of the last block", 0.0)
    drop_rate: float = _opt("dropout before the classifier", 0.0)
    norm: str | None = _opt("norm layers: in-place ABN (TResNet's) or plain BatchNorm (default: the model "
                            "family's: inplace_abn for TResNet, bn for GENet)", choices=NORMS)
    sync_bn: bool = _opt("distributed: synchronise norm statistics across processes (plain BN: on GPUs only)",
                         True)
    memory_efficient: bool = _opt("TResNet with in-place ABN, classification: the memory-lean residual tails (about "
                                  "0.55x timm's activation memory per image, in fp32 and under autocast; a few "
                                  "percent slower)", False)


@dataclass
class DataSection:
    """Where the images and labels come from, and how validation sees them."""

    train: str | None = _opt("ImageNet-style folder (train/ and val/, or class folders), a published set as "
                             f"distributed (NAME:ROOT, NAME one of {', '.join(PUBLISHED_SETS)}), 'digits' or "
                             "'digits-multilabel'; multilabel: an "
                             "images folder with --annotations, or a labels CSV", option="data")
    annotations: str | None = _opt("multilabel: COCO-format annotations of the --data images folder "
                                   "(instances_train2014.json)")
    val: str | None = _opt("validation images folder or labels CSV (default: carved out of --data); with a "
                           "published set, the split validated on, val or test (default: test; it trains on the "
                           "other splits)", option="val_data")
    val_annotations: str | None = _opt("multilabel: COCO-format annotations of --val-data")
    classes: str | None = _opt("multilabel CSV: text file of the class names, one per line (default: the names "
                               "found in the CSV, sorted)")
    val_split: float = _opt("fraction of train carved out as validation when there is no val folder", 0.1)
    split_seed: int = _opt("seed of that split (fixed so that --seed does not change the val set)", 0)
    crop_pct: float | None = _opt("validation: centre-crop fraction (default: the model's)")
    crop_mode: str | None = _opt("validation: 'center' crop or 'squash' the whole image (default: the model's)",
                                 choices=CROP_MODES)
    max_val_images: int | None = _opt("cap on the validation images evaluated each epoch")


@dataclass
class AugmentationSection:
    """What the training images go through (validation images are only resized and cropped)."""

    train_crop_mode: str = _opt("training crop: random-resized crop, or squash the whole image to the size "
                                "(multilabel recipes: no object cut away)", _PER_IMAGE.crop_mode,
                                choices=TRAIN_CROP_MODES)
    scale: tuple[float, float] = _opt("random-resized-crop area range", factory=lambda: _PER_IMAGE.scale)
    ratio: tuple[float, float] = _opt("random-resized-crop aspect range", factory=lambda: _PER_IMAGE.ratio)
    hflip: float = _opt("horizontal flip probability", _PER_IMAGE.hflip)
    scale_jitter: tuple[float, float] = _opt("detection: large-scale jitter, the image resized by a factor drawn in "
                                             "this range, then cropped or padded to the size ((1, 1): off)",
                                             factory=lambda: (1.0, 1.0))
    auto_augment: str | None = _opt("AutoAugment (ImageNet policy) or RandAugment", _PER_IMAGE.auto_augment,
                                    choices=AUTO_AUGMENTS)
    randaugment_magnitude: int = _opt("RandAugment magnitude (0-30)", _PER_IMAGE.randaugment_magnitude)
    randaugment_ops: int = _opt("RandAugment operations per image", _PER_IMAGE.randaugment_ops)
    random_erase: float = _opt("random erasing (Cutout) probability", _PER_IMAGE.random_erase)
    random_erase_mode: str = _opt("fill erased boxes with per-pixel noise or zeros", _PER_IMAGE.random_erase_mode,
                                  choices=ERASE_MODES)
    cutout: float = _opt("Cutout as in ASL: a box of this fraction of the height and width, at a random centre, "
                         "filled with one random colour, on every image (0: off)", _PER_IMAGE.cutout)
    mixup: float = _opt("mixup alpha (0: off)", 0.0)
    cutmix: float = _opt("cutmix alpha (0: off)", 0.0)
    mix_prob: float = _opt("probability of mixing a batch when mixup or cutmix is on", 1.0)

    def per_image(self) -> Augmentation:
        """The per-image part, as the training transform takes it (:func:`create_train_transform`): every field of
        :class:`~tresnet.data.train_transforms.Augmentation`, its crop mode from ``train_crop_mode``."""
        names = [f.name for f in fields(Augmentation) if f.name != "crop_mode"]
        return Augmentation(crop_mode=self.train_crop_mode, **{name: getattr(self, name) for name in names})


@dataclass
class OptimisationSection:
    """How long, in what batches, with which optimiser, schedule, clipping and weight averaging."""

    epochs: int = _opt("number of epochs", 100)
    batch_size: int = _opt("images per step and per process (global batch = this x processes)", 64)
    max_steps_per_epoch: int | None = _opt("cap on the steps of an epoch (quick trials)")
    optimizer: str = _opt("optimiser", "adamw", choices=OPTIMIZERS)
    lr: float = _opt("peak learning rate", 1e-3)
    weight_decay: float = _opt("weight decay of conv and linear weights (never of norms and biases)", 1e-4)
    momentum: float = _opt("SGD momentum (one-cycle cycles it between 0.85 and 0.95)", 0.9)
    schedule: str = _opt("learning-rate schedule, stepped every optimiser step", "cosine", choices=SCHEDULES)
    schedule_epochs: int | None = _opt("length of the schedule in epochs when training stops before its end "
                                       "(default: epochs)")
    warmup_epochs: float = _opt("cosine/constant/multistep: linear warm-up length in epochs", 0.0)
    warmup_start_factor: float = _opt("cosine/constant/multistep: warm-up starts at lr x this", 0.01)
    final_lr_factor: float = _opt("cosine: the last step's lr is lr x this", 0.0)
    milestones: tuple[float, float] = _opt("multistep: the fractions of the schedule at which the lr drops x0.1 "
                                           "(FCOS's 1x: 60k and 80k of 90k steps)", factory=lambda: (2 / 3, 8 / 9))
    pct_start: float = _opt("one-cycle: fraction of the steps spent rising to lr", 0.2)
    div_factor: float = _opt("one-cycle: the first lr is lr / this", 25.0)
    final_div_factor: float = _opt("one-cycle: the last lr is lr / div_factor / this", 1e4)
    clip_grad: float | None = _opt("clip the gradient norm to this (none by default)")
    ema_decay: float = _opt("decay per step of the weights' moving average (0: no EMA)", 0.0)
    ema_warmup: bool = _opt("EMA: decay min(ema_decay, (1 + n) / (10 + n)) at update n (short runs)", False)


@dataclass
class LossSection:
    """The task's loss and its parameters."""

    name: str | None = _opt("loss: the task's (multiclass: ce; multilabel: asl (default), bce or focal)",
                            option="loss")
    reduction: str = _opt("multilabel losses: mean over every (image, class) pair, or the sum (the official "
                          "ASL's)", "mean", choices=REDUCTIONS, option="loss_reduction")
    label_smoothing: float = _opt("label smoothing of the cross-entropy (multiclass)", 0.1)
    asl_gamma_neg: float = _opt("ASL: focusing exponent of the negatives", 4.0)
    asl_gamma_pos: float = _opt("ASL: focusing exponent of the positives", 0.0)
    asl_clip: float = _opt("ASL: probability margin shifted off the negatives", 0.05)
    focal_gamma: float = _opt("focal loss: focusing exponent", 2.0)


_DETECTOR = DetectorOptions()


@dataclass
class DetectionSection:
    """How a detector is put around the backbone (``--task detection``); its input side is ``model.img_size``."""

    max_size: int | None = _opt("the longer-side limit of the detector's resize (default: img_size x 1333 / 800)")
    fpn_channels: int = _opt("width of the feature pyramid", _DETECTOR.fpn_channels)
    anchor_size: int | None = _opt("anchor size of P3, doubling per level to P7 (default: FCOS 8, RetinaNet 32): "
                                   "FCOS gives a level the objects whose centre-to-edge distance is 4x-8x its size")
    trainable_layers: int | None = _opt("backbone parts that train, counted from the deepest, 0-5 (default: 3 from "
                                        "--init-checkpoint, else 5)")
    train_norms: bool | None = _opt("train the backbone's norms (default: frozen when it starts from "
                                    "--init-checkpoint, as torchvision's detectors; trained from scratch)")
    score_threshold: float | None = _opt("keep boxes scoring above this (default: FCOS 0.2, RetinaNet 0.05)")
    nms_threshold: float | None = _opt("non-maximum suppression IoU (default: FCOS 0.6, RetinaNet 0.5)")
    detections_per_image: int = _opt("most boxes kept per image", _DETECTOR.detections_per_image)


@dataclass
class DistillationSection:
    """Knowledge distillation (Ben-Baruch et al., "It's All in the Head", arXiv 2201.06945; docs/distill.md)."""

    method: str | None = _opt("distil from --teacher: kd (softened logits) or th-kd (kd plus the teacher's "
                              "classifier, frozen, on the student's features)", choices=DISTILL_METHODS,
                              option="distill")
    teacher: str | None = _opt("teacher model name (default: the model --teacher-checkpoint names)")
    teacher_checkpoint: str | None = _opt("teacher weights (official, timm or tresnet file; default: --teacher's "
                                          "file in the local cache)")
    weight: float = _opt("weight of the KL term between the teacher's and the student's softened logits (the "
                         "cross-entropy's weight is 1)", 1.0, option="distill_weight")
    temperature: float = _opt("temperature T of the softened logits (the KL terms are scaled by T^2)", 4.0,
                              option="distill_temperature")
    teacher_head_weight: float = _opt("th-kd: weight of the KL term between the teacher's logits and those of its "
                                      "frozen classifier on the student's features (0.02: the TH-KD example of "
                                      "the paper's code)", 0.02)
    teacher_head_blend: float = _opt("th-kd: weight w of the teacher-head prediction in the blend (1 - w) "
                                     "p_student + w p_teacher_head, reported beside the student's own score at "
                                     "each validation (0: not reported)", 0.0)
    frozen_head_from: str | None = _opt("sh-kd step 2: train this model with the classifier of this student "
                                        "checkpoint copied in and frozen (a learned projection when widths "
                                        "differ)")


@dataclass
class RunSection:
    """Where and how the run happens: its folder, device, seed, number precision and processes."""

    output: str | None = _opt("output folder: checkpoints, metrics, config, summary")
    resume: bool = _opt("continue the run saved in --output (with its saved configuration)", False)
    seed: int = _opt("random seed: weights, data order and augmentation derive from it", 0)
    device: str = _opt("'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'", "auto")
    precision: str = _opt("autocast precision; amp is float16 with loss scaling on CUDA, bfloat16 on the CPU",
                          "fp32", choices=PRECISIONS)
    channels_last: bool = _opt("channels-last memory format for weights and inputs", False)
    deterministic: bool = _opt("use deterministic algorithms only (bit-exact resume; slower on GPU)", False)
    workers: int | None = _opt("data loading processes per training process (default: min(8, CPUs))")
    threads: int | None = _opt("CPU threads per process for the math (default: torch's; 1 can be much faster "
                               "on a busy machine)")
    progress: bool = _opt("show progress bars", True)
    log_interval: int = _opt("steps between progress updates and NaN checks", 10)


# The sections in the order a recipe lists them, with the title ``tresnet train --help`` gives each.
SECTIONS: dict[str, type] = {"task": TaskSection, "model": ModelSection, "data": DataSection,
                             "augmentation": AugmentationSection, "optimisation": OptimisationSection,
                             "loss": LossSection, "detection": DetectionSection, "distillation": DistillationSection,
                             "run": RunSection}
SECTION_TITLES = {"task": "task", "model": "model", "data": "data and validation",
                  "augmentation": "augmentation", "optimisation": "length, batch, optimiser, schedule and EMA",
                  "loss": "loss", "detection": "detection (--task detection)",
                  "distillation": "distillation (kd, th-kd, sh-kd)",
                  "run": "run: output, device, seed, precision, processes"}

__all__ = ["DISTILL_METHODS", "NORMS", "SECTIONS", "SECTION_TITLES", "AugmentationSection", "DataSection",
           "DetectionSection",
           "DistillationSection", "LossSection", "ModelSection", "OptimisationSection", "RunSection", "TaskSection"]
