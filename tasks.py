"""Child-training tasks: a dataset (or a variant of one), a child network, a batch size and an episode length.

A controller sees one task per episode. ``train.py --task key=value,...`` (repeatable) trains it on a
mix, the keys being ``Task``'s fields, for example

    --task dataset=mnist,architecture=mlp,batch_size=64,num_train_steps=300
    --task dataset=fa-mnist,label_noise=0.4,classes=5

Keys left out take the command line's value (``--dataset``, ``--batch-size``, ...). The variants
(``classes``, ``label_noise``, ``image_size``) need no download: they are made from a dataset on disk,
and the other scripts take them as flags too, so a task's baselines and tests run on the same data.

The family of random classifiers (``family_task``): a seed draws a whole task, child network
(models.py's random classifiers, or a fixed member), batch size, horizon, data and optimizer.
``--task family=SEED`` names one (other keys override what it drew). Seeds below
FAMILY_TRAINING_SEEDS.start are held out: no training run draws them.
"""
import math
import random
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from data import DEFAULT_VAL_SIZE, Splits, dataset_name, load_splits
from models import ARCHITECTURES, check_architecture
from optimizers import OPTIMIZERS, OptimizerSpec, check_optimizer
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
    optimizer: str = "adam"  # the child's optimizer, one of optimizers.OPTIMIZERS
    weight_decay: float = 0.0
    beta1: float = 0.9  # Adam's first-moment decay; SGD's momentum
    beta2: float = 0.999

    @property
    def name(self):
        """A short readable id: dataset, child, batch, steps, then the settings that differ from the defaults."""
        name = f"{dataset_name(self.dataset)}_{self.architecture}_b{self.batch_size}_s{self.num_train_steps}"
        for key, short in (("train_size", "n"), ("val_size", "val"), ("classes", "c"), ("label_noise", "noise"),
                           ("image_size", "px"), ("optimizer", ""), ("weight_decay", "wd"), ("beta1", "b1-"),
                           ("beta2", "b2-")):
            value = getattr(self, key)
            if value != getattr(Task, key):
                name += f"_{short}{value}" if isinstance(value, str) else f"_{short}{value:g}"
        return name


TASK_KEYS = tuple(f.name for f in fields(Task))
VARIANT_KEYS = ("classes", "label_noise", "image_size")
OPTIMIZER_KEYS = ("optimizer", "weight_decay", "beta1", "beta2")
_INT_KEYS = ("batch_size", "num_train_steps", "train_size", "val_size", "classes", "image_size")
_FLOAT_KEYS = ("label_noise", "weight_decay", "beta1", "beta2")

# ----------------------------------------------------------------------------- the family of random classifiers

FAMILY_TRAINING_SEEDS = range(1_000_000, 2 ** 31)  # what training draws from; every seed below is held out
FAMILY_TRAIN_POOL = 20000  # training images of a family task that uses all of its data
FAMILY_VAL_SIZE = 2000
FAMILY_FIXED_MEMBER = 0.2  # probability that a draw is one of the fixed children (if allowed)


def family_task(seed, optimizers=OPTIMIZERS, members=ARCHITECTURES):
    """The family's task of ``seed``. It draws, in this order: the dataset and its variant (5 classes,
    label noise, 14-pixel images), the fraction of FAMILY_TRAIN_POOL it trains on (10-100%), the batch
    size (16-512), the horizon (300-3000 steps, log-uniform), the child (a random classifier: 0-3
    convolutions, 0-2 dense layers, activation, batch norm, dropout; or, with probability
    FAMILY_FIXED_MEMBER, a fixed child of ``members``), and last the optimizer of ``optimizers`` with
    its settings. So restricting ``members`` or ``optimizers`` changes only those keys of a seed's task
    (and a LeNet-5 draw's image size: it keeps full-size images)."""
    rng = random.Random(seed)
    dataset = rng.choice(("mnist", "fa-mnist"))
    classes = 5 if rng.random() < 0.2 else None
    label_noise = rng.choice((0.0, 0.0, 0.0, 0.2, 0.4))
    image_size = 14 if rng.random() < 0.3 else None
    train_size = round(FAMILY_TRAIN_POOL * rng.uniform(0.1, 1.0))
    batch_size = rng.choice((16, 32, 64, 128, 256, 512))
    num_train_steps = 10 * round(math.exp(rng.uniform(math.log(300), math.log(3000))) / 10)
    fixed = rng.choice(ARCHITECTURES) if rng.random() < FAMILY_FIXED_MEMBER else None
    architecture = random_architecture(rng)
    if fixed in members:
        architecture = fixed
    if architecture == "cnn":
        image_size = None  # LeNet-5 takes 28x28 images or larger: the 14-pixel variant is not for it
    name = rng.choice(optimizers)
    weight_decay, beta1, beta2 = 0.0, 0.9, 0.999  # Adam as the reference has it
    if name in ("adamw", "schedulefree"):
        weight_decay = rng.choice((1e-4, 1e-3, 1e-2, 5e-2))
        beta1, beta2 = rng.choice((0.9, 0.8, 0.95)), rng.choice((0.999, 0.99, 0.98))
    elif name == "sgd":
        beta1 = rng.choice((0.9, 0.5, 0.0))  # its momentum
    return Task(dataset, architecture, batch_size, num_train_steps, train_size, FAMILY_VAL_SIZE, classes, label_noise,
                image_size, name, weight_decay, beta1, beta2)


def random_architecture(rng):
    """A random classifier's name (models.py) drawn with ``rng`` (a random.Random)."""
    parts = [f"c{rng.choice((4, 8, 16))}k{rng.choice((3, 5))}" for _ in range(rng.randint(0, 3))]
    parts += [f"d{rng.choice((32, 64, 128, 256))}" for _ in range(rng.randint(0, 2))]
    parts.append(rng.choice(("relu", "elu", "prelu", "linear")))
    if rng.random() < 0.5:
        parts.append("bn")
    dropout = rng.choice((0.0, 0.0, 0.1, 0.3))
    if dropout:
        parts.append(f"p{dropout}")
    if not any(part[0] in "cd" for part in parts):
        return "rc-linear"  # no hidden layer: softmax regression, whatever else was drawn
    return "rc-" + "-".join(parts)


class FamilyDraws:
    """The tasks one training environment draws, episode after episode: seeds from its own generator
    in FAMILY_TRAINING_SEEDS (so never a held-out instance), reproducible from ``seed``; ``overrides``
    (Task keys) replace what a draw chose (a dataset, a shorter horizon)."""

    def __init__(self, seed, optimizers=OPTIMIZERS, members=ARCHITECTURES, overrides=None):
        self.optimizers, self.members, self.overrides = tuple(optimizers), tuple(members), dict(overrides or {})
        self.generator = random.Random(seed)

    def next(self):
        """The next task and its family seed."""
        seed = self.generator.randrange(FAMILY_TRAINING_SEEDS.start, FAMILY_TRAINING_SEEDS.stop)
        return self.task(seed), seed

    def task(self, seed):
        """The task of family seed ``seed`` with this environment's optimizers, fixed members and overrides."""
        return replace(family_task(seed, self.optimizers, self.members), **self.overrides)

    def state_dict(self):
        return {"generator": list(self.generator.getstate()[1]), "version": self.generator.getstate()[0]}

    def load_state_dict(self, state):
        self.generator.setstate((state["version"], tuple(state["generator"]), None))


def task_from_args(args, **overrides):
    """The task the command line's own flags describe (``--dataset``, ``--batch-size``, ...)."""
    return Task(**{key: getattr(args, key) for key in TASK_KEYS if hasattr(args, key)} | overrides)


def parse_task(spec, base):
    """A ``key=value,key=value`` task description, the keys left out taken from the Task ``base``
    (``family=SEED``: from that family instance). A malformed one is a ValueError saying what is wrong."""
    values = parse_task_values(spec)
    if "family" in values:
        base = family_task(values.pop("family"))
    task = replace(base, **values)
    check_task(task)
    return task


def parse_task_values(spec):
    """The {key: value} of a ``key=value,...`` task description (Task keys and ``family``), converted."""
    values = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in TASK_KEYS + ("family",):
            raise ValueError(f"{item!r} is not key=value with a key among {', '.join(TASK_KEYS + ('family',))}")
        try:
            values[key] = (int(value) if key in _INT_KEYS + ("family",) else float(value) if key in _FLOAT_KEYS
                           else value.strip())
        except ValueError:
            raise ValueError(f"{key}={value!r} is not a number") from None
    return values


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
    check_architecture(task.architecture)
    check_optimizer(OptimizerSpec.of(task))


def load_task_splits(task, data_dir, device="cpu", download=False, cache=None):
    """The splits of ``task``: its dataset's (load_splits), then its variant, on ``device``. With a
    ``cache`` (a dict), a dataset is read once for every task of it: a task's training split is the
    first ``train_size`` images of the whole one, as load_splits takes them."""
    if cache is None:
        splits = load_splits(task.dataset, data_dir, task.train_size, task.val_size, "cpu", download)
    else:
        key = (task.dataset, task.val_size)
        if key not in cache:
            cache[key] = load_splits(task.dataset, data_dir, None, task.val_size, "cpu", download)
        whole = cache[key]
        if (task.train_size or 0) > len(whole.train_y):
            raise UserError(f"{task.dataset} has {len(whole.train_y)} training images besides the validation split, "
                            f"fewer than train_size {task.train_size}")
        splits = replace(whole, train_x=whole.train_x[:task.train_size], train_y=whole.train_y[:task.train_size])
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
