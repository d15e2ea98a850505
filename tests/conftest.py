"""What the tests share: tiny datasets in the real on-disk formats, written by the tests themselves,
and the scripts' command lines run in-process with tiny settings.

Images carry their class as a bright square at a class-dependent place plus noise, so a child
network learns them within a few steps.
"""
import contextlib
import functools
import gzip
import importlib.util
import io
import json
import os
import pickle
import re
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Tiny tensors: one thread is faster, and a second one only spins (it doubled the suite's CPU time).
os.environ["OMP_NUM_THREADS"] = "1"  # for the scripts the tests start as subprocesses
torch.set_num_threads(1)

from utils import run_cli  # noqa: E402  (after the path to the project)



def make_images(num, channels, size, num_classes=10, seed=0):
    """uint8 images (num, channels, size, size) and labels: class k lights up square k."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num)
    images = rng.integers(0, 60, (num, channels, size, size)).astype(np.uint8)
    cells = int(np.ceil(np.sqrt(num_classes)))
    cell = size // cells
    for i, label in enumerate(labels):
        row, col = divmod(int(label), cells)
        images[i, :, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = 230
    return images, labels.astype(np.uint8)


def write_idx(path, array, compress=False):
    """An IDX file (the MNIST format): magic with type 0x08 (uint8) and rank, big-endian sizes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path = Path(f"{path}.gz" if compress else path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)


def write_mnist(root, folder="FashionMNIST", num_train=400, num_test=100, compress=False):
    """torchvision's layout: root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""
    raw = Path(root) / folder / "raw"
    for prefix, num, seed in (("train", num_train, 1), ("t10k", num_test, 2)):
        images, labels = make_images(num, 1, 28, seed=seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[:, 0], compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return Path(root)


def write_cifar(root, per_batch=60, num_test=50):
    """torchvision's cifar-10-batches-py: pickled dicts with 'data' (N, 3072) uint8 and 'labels'."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        images, labels = make_images(num_test if name == "test_batch" else per_batch, 3, 32, seed=seed)
        batch = {"batch_label": name, "data": images.reshape(len(images), -1),
                 "labels": labels.astype(int).tolist(), "filenames": [f"{i}.png" for i in range(len(images))]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return Path(root)


def write_image_folder(root, size=40, mode="RGB", num_classes=3, per_class=(30, 8)):
    """train/<class>/*.png and test/<class>/*.png."""
    channels = 3 if mode == "RGB" else 1
    for split, count in zip(("train", "test"), per_class):
        images, _ = make_images(count * num_classes, channels, size, num_classes, seed=len(split))
        for k in range(num_classes):
            folder = Path(root) / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = images[k * count + i].transpose(1, 2, 0)
                Image.fromarray(pixels[..., 0] if mode == "L" else pixels).save(folder / f"{i}.png")
    return Path(root)


class Exploit:
    """Pickles as a call of ``function(*args)``: what a malicious batch file would run on load."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A --data-dir with tiny Fashion-MNIST (raw IDX) and MNIST (.gz) in torchvision's layout."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, "FashionMNIST")
    write_mnist(root, "MNIST", compress=True)
    write_cifar(root)
    return root


# ----------------------------------------------------------------------------- the scripts, tiny

TINY_SETTING = ["--train-size", "200", "--val-size", "50", "--batch-size", "16", "--num-train-steps", "12",
                "--update-freq", "3", "--device", "cpu"]  # every script's
TINY = [*TINY_SETTING, "--num-envs", "2"]  # train.py's and baselines.py's
TINY_PPO = ["--ppo2-update-freq", "4", "--ppo2-total-timesteps", "64", "--ppo2-nminibatches", "2"]
TINY_GRID = ["--initial-lrs", "0.01", "0.001", "0.0001", "--discount-steps", "3", "--discount-factors", "0.5"]


@functools.cache
def load_script(script):
    """A top-level script as a module (test.py by path: the standard library has a ``test`` package)."""
    spec = importlib.util.spec_from_file_location(f"alrs_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(script, *args, check=True):
    """Run ``script`` with these arguments in this process, as ``python script args`` would (run_cli's
    one-line errors and exit codes); returns returncode, stdout and stderr."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(load_script(script).main, [str(a) for a in args], prog=script)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    result = SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def experiment_id(stdout):
    return re.search(r"experiment id: (\S+)", stdout).group(1)


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def compare_updates(a, b):
    """Two runs' updates.jsonl are the same, but for their speed."""
    drop = lambda records: [{k: v for k, v in r.items() if k != "steps_per_second"} for r in records]
    assert drop(jsonl(a)) == drop(jsonl(b))
