"""Child-training tasks: a dataset (or a variant of one), a child network, a batch size and an episode length.

A controller sees one task per episode. ``train.py --task key=value,...`` (repeatable) trains it on a
mix, the keys being ``Task``'s fields, for example

    --task dataset=mnist,architecture=mlp,batch_size=64,num_train_steps=300
    --task dataset=fa-mnist,label_noise=0.4,classes=5

Keys left out take the command line's value (``--dataset``, ``--batch-size``, ...). The variants
(``classes``, ``label_noise``, ``image_size``) need no download: they are made from a dataset on disk,
and the other scripts take them as flags too, so a task's baselines and tests run on the same data.
"""
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from data import DEFAULT_VAL_SIZE, Splits, dataset_name, load_splits
from utils import UserError

VARIANT_SEED = 1  # which training labels a label-noise variant replaces, the same in every run


@dataclass(frozen=True)
class Task:
    """What one environment trains in every episode."""
    dataset: str = "fa-mnist"  # mnist, fa-mnist, cifar10 or an image folder
    architecture: str = "cnn"  # mlp, cnn (LeNet-5) or resnet
    batch_size: int = 1000
    num_train_steps: int = 1000  # child steps per episode
    train_size: int | None = None  # training images (default: the train split less the validation split)
    val_size: int = DEFAULT_VAL_SIZE  # validation images
    classes: int | None = None  # keep the images of the first this many classes (default: all)
    label_noise: float = 0.0  # this fraction of training labels replaced by uniformly drawn classes
    image_size: int | None = None  # images resized (area interpolation) to this side (default: as stored)

    @property
    def name(self):
        """A short readable id: dataset, child, batch, steps, then the settings that differ from the defaults."""
        name = f"{dataset_name(self.dataset)}_{self.architecture}_b{self.batch_size}_s{self.num_train_steps}"
        for key, short in (("train_size", "n"), ("val_size", "val"), ("classes", "c"), ("label_noise", "noise"),
                           ("image_size", "px")):
            value = getattr(self, key)
            if value != getattr(Task, key):
                name += f"_{short}{value:g}"
        return name


TASK_KEYS = tuple(f.name for f in fields(Task))
VARIANT_KEYS = ("classes", "label_noise", "image_size")
_INT_KEYS = ("batch_size", "num_train_steps", "train_size", "val_size", "classes", "image_size")


def task_from_args(args, **overrides):
    """The task the command line's own flags describe (``--dataset``, ``--batch-size``, ...)."""
    return Task(**{key: getattr(args, key) for key in TASK_KEYS if hasattr(args, key)} | overrides)


def parse_task(spec, base):
    """A ``key=value,key=value`` task description, the keys left out taken from the Task ``base``.
    A malformed one is a ValueError saying what is wrong."""
    values = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in TASK_KEYS:
            raise ValueError(f"{item!r} is not key=value with a key among {', '.join(TASK_KEYS)}")
        try:
            values[key] = (int(value) if key in _INT_KEYS else float(value) if key == "label_noise"
                           else value.strip())
        except ValueError:
            raise ValueError(f"{key}={value!r} is not a number") from None
    task = replace(base, **values)
    check_task(task)
    return task


def check_task(task):
    """The checks a task's values need before any data is read (ValueError naming the key)."""
    for key in ("batch_size", "num_train_steps", "val_size", "train_size", "image_size"):
        value = getattr(task, key)
        if value is not None and value <= 0:
            raise ValueError(f"{key} must be positive, got {value}")
    if task.classes is not None and task.classes < 2:
        raise ValueError(f"classes must be at least 2, got {task.classes}")
    if not 0 <= task.label_noise <= 1:
        raise ValueError(f"label_noise must be in [0, 1], got {task.label_noise}")


def load_task_splits(task, data_dir, device="cpu", download=False):
    """The splits of ``task``: its dataset's (load_splits), then its variant, on ``device``."""
    splits = load_splits(task.dataset, data_dir, task.train_size, task.val_size, "cpu", download)
    return make_variant(splits, task.classes, task.label_noise, task.image_size).to(device)


def make_variant(splits, classes=None, label_noise=0.0, image_size=None):
    """A harder or smaller variant of ``splits``: the first ``classes`` classes only (in every split),
    ``label_noise`` of the training labels replaced by uniformly drawn classes (validation and test
    labels stay clean, so fitting the noise shows as a rising validation loss), images resized to
    ``image_size`` squares."""
    parts = [splits.train_x, splits.train_y, splits.val_x, splits.val_y, splits.test_x, splits.test_y]
    num_classes = splits.num_classes
    if classes is not None:
        if classes > num_classes:
            raise UserError(f"classes={classes}: the dataset has only {num_classes}")
        for i in (0, 2, 4):
            keep = parts[i + 1] < classes
            parts[i], parts[i + 1] = parts[i][keep], parts[i + 1][keep]
        num_classes = classes
    if label_noise > 0:
        generator = torch.Generator().manual_seed(VARIANT_SEED)
        labels = parts[1].clone()
        replaced = torch.rand(len(labels), generator=generator) < label_noise
        labels[replaced] = torch.randint(num_classes, (int(replaced.sum()),), generator=generator)
        parts[1] = labels
    if image_size is not None:
        for i in (0, 2, 4):
            resized = F.interpolate(parts[i].float(), size=(image_size, image_size), mode="area")
            parts[i] = resized.round().clamp(0, 255).to(torch.uint8)
    return Splits(*parts, num_classes)
