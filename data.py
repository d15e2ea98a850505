"""Datasets as uint8 tensors on the training device: MNIST, Fashion-MNIST, CIFAR-10 and image folders.

Reads torchvision's on-disk layouts (raw or .gz IDX files, cifar-10-batches-py, ImageFolder trees)
without network, splits off a fixed validation set, and keeps every split on the device so that
batches are gathered by index.
"""
import gzip
import math
import pickle
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils import UserError, new_folders, remove_empty

DATASETS = ("mnist", "fa-mnist", "cifar10")
SPLIT_SEED = 0  # the validation split is the same for every experiment, so results compare
DEFAULT_VAL_SIZE = 10000


def data_source(dataset, data_dir):
    """Where ``load_splits`` reads a dataset from, for messages: --data-dir for a named dataset, else
    the image folder itself."""
    return f"{dataset} from {data_dir}" if dataset in DATASETS else f"images from {dataset}"


def dataset_name(dataset):
    """Short name of a dataset flag for ids and folders: the name itself, or a safe slug of an image
    folder's name (letters, digits, '.', '_', '-'; anything else becomes '-')."""
    if dataset in DATASETS:
        return dataset
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(dataset).resolve().name).strip("-.") or "images"



@dataclass
class Splits:
    """Train/validation/test images as uint8 (N, C, H, W) tensors with int64 labels, on one device."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def in_channels(self):
        return self.train_x.shape[1]

    @property
    def image_size(self):
        return tuple(self.train_x.shape[2:])

    def to(self, device):
        return Splits(*(t.to(device) for t in (self.train_x, self.train_y, self.val_x, self.val_y,
                                                self.test_x, self.test_y)), self.num_classes)


MNIST_FOLDERS = {"mnist": "MNIST", "fa-mnist": "FashionMNIST"}
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
TORCHVISION_CLASSES = {"mnist": "MNIST", "fa-mnist": "FashionMNIST", "cifar10": "CIFAR10"}  # torchvision.datasets
MISSING_HINTS = {  # where the files go, for a machine without network
    "mnist": "put torchvision's MNIST files ({{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte, raw or .gz) in "
             "{data_dir}/MNIST/raw/, or pass --data-dir",
    "fa-mnist": "put torchvision's FashionMNIST files ({{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte, raw or .gz) "
                "in {data_dir}/FashionMNIST/raw/, or pass --data-dir",
    "cifar10": "unpack cifar-10-python.tar.gz into {data_dir}/ (it holds cifar-10-batches-py/), or pass --data-dir",
}


def parse_idx(data):
    """The uint8 array of an IDX file's bytes (MNIST's format: two zero bytes, the type 0x08, the rank,
    big-endian sizes, then the values), as torchvision reads it. Read here rather than with
    torchvision's reader so that loading MNIST does not import torchvision (seconds per process)."""
    if len(data) < 4 or data[:3] != b"\0\0\x08":
        raise ValueError("not an IDX file of unsigned bytes")
    rank = data[3]
    try:
        shape = struct.unpack(f">{rank}I", data[4:4 + 4 * rank])
    except struct.error:
        raise ValueError("its header is cut short") from None
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank)
    if values.size != math.prod(shape):
        raise ValueError(f"it holds {values.size} values, its header says {math.prod(shape)}")
    return torch.from_numpy(values.reshape(shape).copy())


def _read_idx(raw_dir, name):
    """Read an IDX file from ``name`` or, failing that, ``name.gz``; a damaged file (truncated
    archive, wrong header) is a UserError naming it."""
    path = raw_dir / name if (raw_dir / name).exists() else raw_dir / f"{name}.gz"
    try:
        return parse_idx(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
    except (EOFError, OSError, zlib.error, ValueError) as error:
        raise UserError(f"{path} is damaged ({type(error).__name__}: {error}); replace it with a fresh copy") from None


def missing_files(dataset, data_dir):
    """The names of a named dataset's files that are not under ``data_dir`` (in torchvision's layout)."""
    if dataset == "cifar10":
        folder = Path(data_dir) / "cifar-10-batches-py"
        return [n for n in CIFAR10_FILES if not (folder / n).exists()]
    raw_dir = Path(data_dir) / MNIST_FOLDERS[dataset] / "raw"
    return [n for pair in MNIST_FILES.values() for n in pair
            if not (raw_dir / n).exists() and not (raw_dir / f"{n}.gz").exists()]


def download_dataset(dataset, data_dir):
    """Fetch a named dataset with torchvision's own class, which writes exactly the layout read here
    and checks each archive's MD5 sum; a failure (no network, a bad archive) is a UserError, and the
    empty folders it made are removed."""
    print(f"downloading {dataset} into {data_dir}/ with torchvision ...", flush=True)
    created = new_folders(Path(data_dir) / MNIST_FOLDERS[dataset] / "raw" if dataset in MNIST_FOLDERS else data_dir)
    import torchvision.datasets  # only here and for image folders: torchvision takes seconds to import
    try:
        getattr(torchvision.datasets, TORCHVISION_CLASSES[dataset])(root=str(data_dir), train=True, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; bad checksums are RuntimeErrors
        remove_empty(created)
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise UserError(f"could not download {dataset} ({reason}); without network, "
                        + MISSING_HINTS[dataset].format(data_dir=data_dir)) from None


def load_mnist_like(dataset, data_dir):
    """Official train and test splits of MNIST / Fashion-MNIST from raw or .gz IDX files."""
    raw_dir = Path(data_dir) / MNIST_FOLDERS[dataset] / "raw"
    if missing := missing_files(dataset, data_dir):
        raise UserError(f"{dataset} not found: {', '.join(missing)} missing in {raw_dir}/; "
                        + MISSING_HINTS[dataset].format(data_dir=data_dir) + " (or --download)")
    splits = {}
    for split, (images, labels) in MNIST_FILES.items():
        x = _read_idx(raw_dir, images).unsqueeze(1)
        y = _read_idx(raw_dir, labels).long()
        splits[split] = (x, y)
    return splits["train"], splits["test"], 10


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches (dicts of numpy arrays and lists) and refuses any other object."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path):
    with open(path, "rb") as f:
        batch = _ArrayUnpickler(f, encoding="latin1").load()
    x = torch.from_numpy(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
    return x, torch.tensor(batch["labels"], dtype=torch.long)


def load_cifar10(data_dir):
    """Official CIFAR-10 train (data_batch_1..5) and test (test_batch) splits, python format."""
    folder = Path(data_dir) / "cifar-10-batches-py"
    if missing := missing_files("cifar10", data_dir):
        raise UserError(f"cifar10 not found: {', '.join(missing)} missing in {folder}/; "
                        + MISSING_HINTS["cifar10"].format(data_dir=data_dir) + " (or --download)")
    try:
        train = [_read_cifar_batch(folder / n) for n in CIFAR10_FILES[:-1]]
        test = _read_cifar_batch(folder / CIFAR10_FILES[-1])
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as error:
        raise UserError(f"{folder} holds a file that is not a CIFAR-10 batch: {error}") from error
    return (torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])), test, 10


def _read_image_folder(root, mode):
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor
    folder = ImageFolder(root, loader=lambda path: _open_image(path, mode))
    images = [pil_to_tensor(image) for image, _ in folder]
    odd = next((i for i, x in enumerate(images) if x.shape != images[0].shape), None)
    if odd is not None:
        size = lambda i: "x".join(map(str, images[i].shape[1:]))
        raise UserError(f"images under {root} differ in size: {folder.samples[odd][0]} is {size(odd)}, "
                        f"{folder.samples[0][0]} is {size(0)}; resize them to one size first")
    return torch.stack(images), torch.tensor(folder.targets, dtype=torch.long), folder.classes


def _image_mode(path):
    from PIL import Image
    with Image.open(path) as image:
        return image.mode


def _open_image(path, mode):
    from PIL import Image
    with Image.open(path) as image:
        return image.convert(mode)


def load_image_folder(path):
    """train/<class>/* and test/<class>/* images; grayscale if every training image is, else RGB."""
    root = Path(path)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise UserError(f"{root} must hold train/<class>/* and test/<class>/* image folders")
    from torchvision.datasets import ImageFolder
    try:
        probe = ImageFolder(root / "train")
        if len(probe.classes) < 2:
            raise UserError(f"{root}/train has {len(probe.classes)} class folder(s); classification needs at least 2")
        grayscale = all(_image_mode(p) in ("1", "L", "I;16", "I") for p, _ in probe.samples[:100])
        mode = "L" if grayscale else "RGB"
        train_x, train_y, classes = _read_image_folder(root / "train", mode)
        test_x, test_y, test_classes = _read_image_folder(root / "test", mode)
    except (FileNotFoundError, OSError) as error:
        raise UserError(f"cannot read images under {root}: {error}") from error
    if test_classes != classes:
        raise UserError(f"{root}/test has classes {test_classes}, train has {classes}")
    return (train_x, train_y), (test_x, test_y), len(classes)


def load_splits(dataset, data_dir, train_size=None, val_size=DEFAULT_VAL_SIZE, device="cpu", download=False):
    """The train/validation/test splits of a dataset as uint8 tensors on ``device``.

    The validation split is a fixed random subset (seed SPLIT_SEED) of the official training set;
    the training split is the rest, or its first ``train_size`` samples. ``download``: fetch a named
    dataset whose files are missing.
    """
    if download and dataset in TORCHVISION_CLASSES and missing_files(dataset, data_dir):
        download_dataset(dataset, data_dir)
    if dataset in MNIST_FOLDERS:
        (x, y), (test_x, test_y), num_classes = load_mnist_like(dataset, data_dir)
    elif dataset == "cifar10":
        (x, y), (test_x, test_y), num_classes = load_cifar10(data_dir)
    else:
        (x, y), (test_x, test_y), num_classes = load_image_folder(dataset)
    available = len(x) - val_size
    if available <= 0 or (train_size or 0) > available:
        raise UserError(f"{dataset_name(dataset)} has {len(x)} training images: too few for "
                        f"--val-size {val_size} and --train-size {train_size}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_idx, train_idx = order[:val_size], order[val_size:val_size + (train_size or available)]
    return Splits(x[train_idx], y[train_idx], x[val_idx], y[val_idx], test_x, test_y,
                  num_classes).to(device)
