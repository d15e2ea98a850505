"""Command line, data loading, files and figures shared by train.py, baselines.py and test.py."""
import argparse
import gzip
import io
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import ImageFolder
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.transforms.functional import pil_to_tensor

from models import ARCHITECTURES

DATASETS = ("mnist", "fa-mnist", "cifar10")
SPLIT_SEED = 0  # the validation split is the same for every experiment, so results compare
DEFAULT_VAL_SIZE = 10000
UNTRAINED_CHECKPOINT = "step-0000000_untrained.pt"  # the initial policy: test.py's control
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file); printed as one line, never a traceback."""


# ----------------------------------------------------------------------------- command line

def build_parser():
    p = argparse.ArgumentParser(
        description="ALRS: learn an adaptive learning-rate schedule with PPO (arXiv:1909.09712).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="fa-mnist",
                   help=f"one of {', '.join(DATASETS)}, or a folder with train/<class>/* and test/<class>/* images")
    p.add_argument("--architecture", default="cnn", choices=ARCHITECTURES, help="child network")
    p.add_argument("--batch-size", type=int, default=1000, help="child training batch size")
    p.add_argument("--update-freq", type=int, default=10, help="child steps between controller actions")
    p.add_argument("--num-train-steps", type=int, default=1000, help="child steps per episode")
    p.add_argument("--initial-lr", type=float, default=1e-3,
                   help="child's initial learning rate; 0 draws one of 1e-2, 1e-3, 1e-4 per episode")
    p.add_argument("--num-envs", type=int, default=4, help="environments (children) trained together")
    p.add_argument("--discrete", type=int, default=0, choices=(0, 1),
                   help="1: actions multiply/divide/keep the lr; 0: a continuous scale factor")
    p.add_argument("--action-range", type=float, default=1.05, help="largest factor one action applies")
    p.add_argument("--ppo2-gamma", type=float, default=1.0, help="discount factor")
    p.add_argument("--ppo2-update-freq", type=int, default=100, help="rollout length per environment")
    p.add_argument("--ppo2-ent-coef", type=float, default=0.1, help="entropy coefficient")
    p.add_argument("--ppo2-lr", type=float, default=3e-3, help="controller Adam learning rate")
    p.add_argument("--ppo2-total-timesteps", type=int, default=50000, help="controller steps over all envs")
    p.add_argument("--ppo2-nminibatches", type=int, default=4, help="minibatches per PPO epoch")
    p.add_argument("--ppo2-noptepochs", type=int, default=4, help="PPO epochs per rollout")
    p.add_argument("--ppo2-cliprange", type=float, default=10.0,
                   help="PPO clip range (<= 0: no clipping), also the observation/reward clip unless --norm-clip")
    p.add_argument("--ppo2-norm-obs", type=int, default=1, choices=(0, 1), help="normalize observations")
    p.add_argument("--ppo2-norm-reward", type=int, default=1, choices=(0, 1), help="normalize rewards")
    p.add_argument("--action-param", default="clip", choices=("clip", "log"),
                   help="continuous action a -> factor: clip(a, 1/range, range) (reference) or range**clip(a, -1, 1)")
    p.add_argument("--norm-clip", type=float, default=None,
                   help="clip of normalized observations and rewards (default: --ppo2-cliprange if > 0, else 10)")
    p.add_argument("--reward", default="val-loss", choices=("val-loss", "log-improvement"),
                   help="per step: -L(t) (reference) or log L(t-1) - log L(t)")
    p.add_argument("--tb-suffix", default="", help="suffix appended to the experiment id")
    p.add_argument("--test-id", default=None, help="experiment id whose controller test.py evaluates")
    p.add_argument("--test-schedule", default="best",
                   help="checkpoint test.py evaluates: best, latest, or a file name in checkpoints/")
    p.add_argument("--test-deterministic", type=int, default=1, choices=(0, 1),
                   help="test.py: 1 acts with the policy's mode, 0 samples actions (as the reference)")
    p.add_argument("--data-dir", default="data", help="folder holding the datasets (torchvision layout)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where children train")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--runs-dir", default="runs", help="folder of experiments and baseline results")
    p.add_argument("--train-size", type=int, default=None,
                   help="training samples (default: the train split minus the validation split)")
    p.add_argument("--val-size", type=int, default=DEFAULT_VAL_SIZE, help="validation samples")
    p.add_argument("--test-runs", type=int, default=10, help="seeds test.py evaluates")
    p.add_argument("--initial-lrs", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3, 1e-4],
                   help="baselines.py grid: initial learning rates")
    p.add_argument("--discount-steps", type=int, nargs="+", default=[10, 20, 50, 100],
                   help="baselines.py grid: steps between decays")
    p.add_argument("--discount-factors", type=float, nargs="+", default=[0.99, 0.9, 0.88],
                   help="baselines.py grid: decay factors")
    p.add_argument("--resume", default=None, metavar="ID", help="train.py: continue experiment ID")
    return p


def parse_args(argv=None):
    """Parse and check every flag; a wrong value exits with an argparse error naming what is valid."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset not in DATASETS and not Path(args.dataset).is_dir():
        parser.error(f"argument --dataset: invalid choice: {args.dataset!r} "
                     f"(choose from {', '.join(DATASETS)}, or an existing image folder)")
    positive = ("batch_size", "update_freq", "num_train_steps", "num_envs", "ppo2_update_freq",
                "ppo2_total_timesteps", "ppo2_nminibatches", "ppo2_noptepochs", "val_size", "test_runs")
    for name in positive + ("train_size",):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"argument --{name.replace('_', '-')}: must be positive, got {value}")
    if args.num_train_steps % args.update_freq or args.num_train_steps < 2 * args.update_freq:
        parser.error(f"argument --update-freq: must divide --num-train-steps ({args.num_train_steps}) "
                     f"at least twice, got {args.update_freq}")
    if args.action_range <= 1:
        parser.error(f"argument --action-range: must be > 1, got {args.action_range}")
    if args.initial_lr < 0 or any(lr <= 0 for lr in args.initial_lrs) or args.ppo2_lr <= 0:
        parser.error("learning rates must be positive (--initial-lr may be 0: drawn per episode)")
    if args.norm_clip is not None and args.norm_clip <= 0:
        parser.error(f"argument --norm-clip: must be positive, got {args.norm_clip}")
    if not 0 <= args.ppo2_gamma <= 1:
        parser.error(f"argument --ppo2-gamma: must be in [0, 1], got {args.ppo2_gamma}")
    if args.ppo2_total_timesteps < args.num_envs * args.ppo2_update_freq:
        parser.error(f"argument --ppo2-total-timesteps: less than one rollout "
                     f"(--num-envs x --ppo2-update-freq = {args.num_envs * args.ppo2_update_freq})")
    if (args.num_envs * args.ppo2_update_freq) % args.ppo2_nminibatches:
        parser.error(f"argument --ppo2-nminibatches: must divide --num-envs x --ppo2-update-freq "
                     f"({args.num_envs * args.ppo2_update_freq})")
    if any(s <= 0 for s in args.discount_steps) or any(not 0 < f <= 1 for f in args.discount_factors):
        parser.error("--discount-steps must be positive and --discount-factors in (0, 1]")
    for name in ("test_id", "resume", "tb_suffix"):
        value = getattr(args, name)
        if value and not RUN_ID_PATTERN.fullmatch(value):
            parser.error(f"argument --{name.replace('_', '-')}: {value!r} is not a plain name "
                         "(letters, digits, '.', '_', '-'; no paths)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda is not available on this machine (use cpu or auto)")
    return args


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def dataset_name(dataset):
    """Short name of a dataset flag: the name itself, or the folder's name for an image folder."""
    return dataset if dataset in DATASETS else Path(dataset).resolve().name


def run_cli(main):
    """Run a script's main(): user errors become one line on stderr, Ctrl-C a clean exit."""
    prog = Path(sys.argv[0]).name
    try:
        main()
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; finished results are saved.", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------- data

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


def _read_idx(raw_dir, name, reader):
    """Read an IDX file with torchvision's reader, from ``name`` or, failing that, ``name.gz``."""
    path = raw_dir / name
    if path.exists():
        return reader(str(path))
    with gzip.open(raw_dir / f"{name}.gz", "rb") as compressed, tempfile.NamedTemporaryFile() as plain:
        shutil.copyfileobj(compressed, plain)
        plain.flush()
        return reader(plain.name)


def load_mnist_like(dataset, data_dir):
    """Official train and test splits of MNIST / Fashion-MNIST from raw or .gz IDX files."""
    raw_dir = Path(data_dir) / MNIST_FOLDERS[dataset] / "raw"
    names = [n for pair in MNIST_FILES.values() for n in pair]
    missing = [n for n in names if not (raw_dir / n).exists() and not (raw_dir / f"{n}.gz").exists()]
    if missing:
        raise UserError(f"{dataset} not found: put {', '.join(missing)} (raw or .gz) in {raw_dir}/ "
                        f"(copy ../shared/data/{MNIST_FOLDERS[dataset]} into {data_dir}/, or pass --data-dir)")
    splits = {}
    for split, (images, labels) in MNIST_FILES.items():
        x = _read_idx(raw_dir, images, read_image_file).unsqueeze(1)
        y = _read_idx(raw_dir, labels, read_label_file).long()
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
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise UserError(f"cifar10 not found: put {', '.join(missing)} in {folder}/ "
                        "(unpack cifar-10-python.tar.gz there, or pass --data-dir)")
    try:
        train = [_read_cifar_batch(folder / n) for n in names[:-1]]
        test = _read_cifar_batch(folder / names[-1])
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as error:
        raise UserError(f"{folder} holds a file that is not a CIFAR-10 batch: {error}") from error
    return (torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])), test, 10


def _read_image_folder(root, mode):
    folder = ImageFolder(root, loader=lambda path: _open_image(path, mode))
    images = [pil_to_tensor(image) for image, _ in folder]
    if len({tuple(x.shape) for x in images}) != 1:
        raise UserError(f"images under {root} differ in size; resize them to one size first")
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
    try:
        probe = ImageFolder(root / "train")
        grayscale = all(_image_mode(p) in ("1", "L", "I;16", "I") for p, _ in probe.samples[:100])
        mode = "L" if grayscale else "RGB"
        train_x, train_y, classes = _read_image_folder(root / "train", mode)
        test_x, test_y, test_classes = _read_image_folder(root / "test", mode)
    except (FileNotFoundError, OSError) as error:
        raise UserError(f"cannot read images under {root}: {error}") from error
    if test_classes != classes:
        raise UserError(f"{root}/test has classes {test_classes}, train has {classes}")
    return (train_x, train_y), (test_x, test_y), len(classes)


def load_splits(dataset, data_dir, train_size=None, val_size=DEFAULT_VAL_SIZE, device="cpu"):
    """The train/validation/test splits of a dataset as uint8 tensors on ``device``.

    The validation split is a fixed random subset (seed SPLIT_SEED) of the official training set;
    the training split is the rest, or its first ``train_size`` samples.
    """
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


# ----------------------------------------------------------------------------- files

def atomic_write(path, write):
    """Write a file through ``write(file_object)`` into a temporary file, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process; open() honours the umask
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def json_floats(values):
    """Floats for a JSON file: NaN and infinities (which JSON lacks) become null."""
    return [float(v) if math.isfinite(v) else None for v in values]


def load_json(path):
    with open(path) as f:
        return json.load(f)


def append_jsonl(path, record):
    """Append one record as a line; a crash can lose at most the line being written."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path):
    """Records of a JSONL file; a last line cut short by a crash is skipped, any other bad line is an error."""
    if not Path(path).exists():
        return []
    lines = Path(path).read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise UserError(f"{path}, line {number}, is not JSON; repair or remove that line") from None
    return records


def save_checkpoint(path, state):
    """Save a dict of tensors and plain values atomically (loadable with weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def load_checkpoint(path, required=("format",)):
    """Load a checkpoint with weights_only=True; a truncated or foreign file is a UserError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as error:  # torch raises many types for damaged or unsafe files
        raise UserError(f"{path} is not a readable ALRS checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or any(key not in state for key in required):
        raise UserError(f"{path} is not an ALRS checkpoint")
    return state


def list_runs(runs_dir):
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(p.name for p in runs_dir.iterdir() if (p / "args.json").exists())


def find_run(runs_dir, run_id):
    """The folder of experiment ``run_id``; a missing one is a UserError listing the ones there are."""
    path = Path(runs_dir) / run_id
    if not (path / "args.json").exists():
        known = list_runs(runs_dir)
        raise UserError(f"no experiment {run_id!r} in {runs_dir}/; experiments there: "
                        f"{', '.join(known) if known else 'none (run train.py first)'}")
    return path


# ----------------------------------------------------------------------------- figures

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_schedules(curves, path, title):
    """Three panels against child steps: log training loss, log validation loss, learning rate.

    ``curves`` maps a method name to a dict with lists ``step``, ``train_loss``, ``val_loss``, ``lr``
    (one run), or to such lists stacked over runs (drawn as mean with a min-max band).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, curve in curves.items():
        step = np.asarray(curve["step"])
        for ax, key in zip(axes, ("train_loss", "val_loss", "lr")):
            values = np.atleast_2d(np.asarray(curve[key], dtype=float))
            line, = ax.plot(step, values.mean(0), label=name)
            if len(values) > 1:
                ax.fill_between(step, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    for ax, label in zip(axes, ("training loss", "validation loss", "learning rate")):
        ax.set_yscale("log")
        ax.set_xlabel("child training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def plot_training(episodes, updates, path, title):
    """Training progress of a controller: episode final validation loss, PPO losses, KL/clip."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if episodes:
        axes[0].plot([e["timesteps"] for e in episodes], [e["final_val_loss"] for e in episodes], ".", alpha=0.5)
        axes[0].set_yscale("log")
    axes[0].set(xlabel="controller steps", ylabel="final validation loss of each episode")
    for key in ("policy_loss", "value_loss", "entropy"):
        axes[1].plot([u["timesteps"] for u in updates], [u[key] for u in updates], label=key)
    axes[1].set(xlabel="controller steps", ylabel="PPO loss")
    axes[1].legend()
    for key in ("approx_kl", "clip_fraction", "explained_variance"):
        axes[2].plot([u["timesteps"] for u in updates], [u[key] for u in updates], label=key)
    axes[2].set(xlabel="controller steps")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
