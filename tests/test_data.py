"""Data loading (data.load_splits) from tiny files in the real formats, and checkpoint/file I/O."""
import functools
import hashlib
import http.server
import os
import pickle
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from conftest import Exploit, make_images, write_cifar, write_image_folder, write_mnist
from data import load_splits
from utils import UserError

MNIST_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def source_indices(images, originals):
    """For each image of a split, the index of the identical image among the ones written."""
    where = {np.ascontiguousarray(image).tobytes(): i for i, image in enumerate(originals)}
    assert len(where) == len(originals)  # noise makes every written image unique
    return np.array([where[image.numpy().tobytes()] for image in images])


def check_split_covers(splits, images, labels):
    """Train and validation splits are disjoint, cover the training images, carry their labels."""
    train = source_indices(splits.train_x, images)
    val = source_indices(splits.val_x, images)
    assert not set(train) & set(val)
    assert sorted(np.concatenate([train, val])) == list(range(len(images)))
    np.testing.assert_array_equal(splits.train_y.numpy(), labels[train])
    np.testing.assert_array_equal(splits.val_y.numpy(), labels[val])
    return train, val


# ----------------------------------------------------------------------------- MNIST-likes


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dataset,folder", [("mnist", "MNIST"), ("fa-mnist", "FashionMNIST")])
def test_mnist_like_values(tmp_path, compress, dataset, folder):
    write_mnist(tmp_path, folder, num_train=120, num_test=30, compress=compress)
    splits = load_splits(dataset, tmp_path, val_size=20)
    train_images, train_labels = make_images(120, 1, 28, seed=1)
    test_images, test_labels = make_images(30, 1, 28, seed=2)
    for x, y, n in ((splits.train_x, splits.train_y, 100), (splits.val_x, splits.val_y, 20),
                    (splits.test_x, splits.test_y, 30)):
        assert x.dtype == torch.uint8 and x.shape == (n, 1, 28, 28)
        assert y.dtype == torch.int64 and y.shape == (n,)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, (28, 28))
    np.testing.assert_array_equal(splits.test_x.numpy(), test_images)
    np.testing.assert_array_equal(splits.test_y.numpy(), test_labels)
    check_split_covers(splits, train_images, train_labels)


def test_raw_and_gz_idx_give_identical_tensors(tmp_path):
    write_mnist(tmp_path / "raw", "MNIST", num_train=80, num_test=20)
    write_mnist(tmp_path / "gz", "MNIST", num_train=80, num_test=20, compress=True)
    assert (tmp_path / "gz/MNIST/raw/train-images-idx3-ubyte.gz").exists()
    assert not (tmp_path / "gz/MNIST/raw/train-images-idx3-ubyte").exists()
    raw, gz = (load_splits("mnist", tmp_path / name, val_size=10) for name in ("raw", "gz"))
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        a, b = getattr(raw, name), getattr(gz, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name


@pytest.mark.parametrize("train_size,expected", [(None, 350), (100, 100), (350, 350)])
def test_split_sizes(mnist_dir, train_size, expected):
    splits = load_splits("fa-mnist", mnist_dir, train_size=train_size, val_size=50)
    assert (len(splits.train_x), len(splits.val_x), len(splits.test_x)) == (expected, 50, 100)
    assert len(splits.train_y) == expected and len(splits.val_y) == 50


def test_validation_split_is_a_fixed_random_subset(mnist_dir):
    images, labels = make_images(400, 1, 28, seed=1)
    first = load_splits("fa-mnist", mnist_dir, val_size=50)
    again = load_splits("fa-mnist", mnist_dir, train_size=120, val_size=50)
    train, val = check_split_covers(first, images, labels)
    # same validation samples whatever --train-size is; the smaller train split is a prefix
    assert torch.equal(again.val_x, first.val_x) and torch.equal(again.val_y, first.val_y)
    assert torch.equal(again.train_x, first.train_x[:120])
    # a random subset, not the first or last samples of the file
    assert sorted(val) != list(range(50)) and sorted(val) != list(range(350, 400))
    assert not np.array_equal(train, np.sort(train))


@pytest.mark.parametrize("train_size,val_size", [(None, 400), (None, 500), (351, 50)])
def test_too_large_split_is_a_user_error(mnist_dir, train_size, val_size):
    with pytest.raises(UserError, match="--val-size"):
        load_splits("fa-mnist", mnist_dir, train_size=train_size, val_size=val_size)


# ----------------------------------------------------------------------------- CIFAR-10


def test_cifar10_from_pickled_batches(tmp_path):
    write_cifar(tmp_path, per_batch=30, num_test=20)
    splits = load_splits("cifar10", tmp_path, val_size=40)
    batches = [make_images(30, 3, 32, seed=seed) for seed in range(5)]  # data_batch_1..5
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert splits.train_x.shape == (110, 3, 32, 32) and splits.val_x.shape == (40, 3, 32, 32)
    assert splits.train_x.dtype == torch.uint8 and splits.train_y.dtype == torch.int64
    check_split_covers(splits, images, labels)
    test_images, test_labels = make_images(20, 3, 32, seed=5)
    np.testing.assert_array_equal(splits.test_x.numpy(), test_images)
    np.testing.assert_array_equal(splits.test_y.numpy(), test_labels)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 3, (32, 32))


@pytest.mark.parametrize("payload", ["os.mkdir", "builtins.eval"])
def test_cifar_batch_with_foreign_objects_is_refused_without_running_them(tmp_path, payload):
    write_cifar(tmp_path, per_batch=10, num_test=10)
    marker = tmp_path / "pwned"
    exploit = (Exploit(os.mkdir, str(marker)) if payload == "os.mkdir"
               else Exploit(eval, f"__import__('pathlib').Path({str(marker)!r}).touch()"))
    batch = {"data": exploit, "labels": [0] * 10}
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(UserError, match="not a CIFAR-10 batch"):
        load_splits("cifar10", tmp_path, val_size=10)
    assert not marker.exists()


def test_cifar_batch_without_data_key_is_a_user_error(tmp_path):
    write_cifar(tmp_path, per_batch=10, num_test=10)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"labels": [1, 2]}, f)
    with pytest.raises(UserError, match="test_batch|not a CIFAR-10 batch"):
        load_splits("cifar10", tmp_path, val_size=10)


def test_cifar_batch_that_is_not_a_dict_is_a_user_error(tmp_path):
    write_cifar(tmp_path, per_batch=10, num_test=10)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(UserError):
        load_splits("cifar10", tmp_path, val_size=10)


# ----------------------------------------------------------------------------- image folders


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("L", 1)])
def test_image_folder(tmp_path, mode, channels):
    root = write_image_folder(tmp_path / "shapes", size=40, mode=mode, num_classes=3, per_class=(20, 6))
    splits = load_splits(str(root), None, val_size=15)
    assert splits.train_x.shape == (45, channels, 40, 40) and splits.val_x.shape == (15, channels, 40, 40)
    assert splits.test_x.shape == (18, channels, 40, 40)
    assert splits.train_x.dtype == torch.uint8 and splits.test_y.dtype == torch.int64
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (3, channels, (40, 40))
    # images of folder class<k> are images[k * count: (k + 1) * count] of what was written
    train_images, _ = make_images(60, channels, 40, 3, seed=len("train"))
    check_split_covers(splits, train_images, np.arange(60) // 20)
    test_images, _ = make_images(18, channels, 40, 3, seed=len("test"))
    test_source = source_indices(splits.test_x, test_images)
    np.testing.assert_array_equal(splits.test_y.numpy(), test_source // 6)


def break_folder(root, how):
    if how == "no test folder":
        for path in sorted((root / "test").rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (root / "test").rmdir()
    elif how == "different classes":
        (root / "test" / "class2").rename(root / "test" / "other")
    elif how == "mixed sizes":
        from PIL import Image
        Image.new("RGB", (20, 20)).save(root / "train" / "class0" / "small.png")


@pytest.mark.parametrize("how,message", [("no test folder", "train/<class>"),
                                         ("different classes", "classes"),
                                         ("mixed sizes", r"differ in size: \S+small.png is 20x20, \S+0.png is 32x32")])
def test_broken_image_folder_is_a_user_error(tmp_path, how, message):
    root = write_image_folder(tmp_path / "shapes", size=32, num_classes=3, per_class=(4, 2))
    break_folder(root, how)
    with pytest.raises(UserError, match=message):
        load_splits(str(root), None, val_size=2)


# ----------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("dataset,folder,names", [
    ("mnist", "MNIST/raw", MNIST_NAMES),
    ("fa-mnist", "FashionMNIST/raw", MNIST_NAMES),
    ("cifar10", "cifar-10-batches-py", CIFAR_NAMES),
])
def test_missing_dataset_names_files_and_folder(tmp_path, dataset, folder, names):
    with pytest.raises(UserError) as error:
        load_splits(dataset, tmp_path)
    message = str(error.value)
    assert all(name in message for name in names)
    assert str(tmp_path / folder) in message


@pytest.mark.parametrize("writer,dataset,folder,missing,present", [
    (write_mnist, "fa-mnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte"),
    (write_cifar, "cifar10", "cifar-10-batches-py", "data_batch_4", "data_batch_1"),
])
def test_one_missing_file_is_named_alone(tmp_path, writer, dataset, folder, missing, present):
    writer(tmp_path)
    (tmp_path / folder / missing).unlink()
    with pytest.raises(UserError) as error:
        load_splits(dataset, tmp_path)
    assert missing in str(error.value) and present not in str(error.value)


# ----------------------------------------------------------------------------- --download


@pytest.fixture
def mirror(tmp_path):
    """A loopback HTTP server over a folder: (folder, its URL). No test reaches the internet."""
    folder = tmp_path / "mirror"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def serve_fashion_mnist(mirror, monkeypatch, corrupt=None):
    """Tiny Fashion-MNIST .gz archives on the mirror, torchvision's FashionMNIST pointed at them."""
    folder, url = mirror
    write_mnist(folder / "made", "FashionMNIST", compress=True)
    resources = []
    for path in sorted((folder / "made" / "FashionMNIST" / "raw").iterdir()):
        path.rename(folder / path.name)
        resources.append((path.name, "0" * 32 if path.name == corrupt else md5(folder / path.name)))
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [url])
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources)


def test_download_fetches_fashion_mnist_into_the_layout_read(tmp_path, mirror, monkeypatch):
    serve_fashion_mnist(mirror, monkeypatch)
    data_dir = tmp_path / "data"
    splits = load_splits("fa-mnist", data_dir, val_size=50, download=True)
    reference = load_splits("fa-mnist", write_mnist(tmp_path / "reference", "FashionMNIST"), val_size=50)
    assert torch.equal(splits.train_x, reference.train_x) and torch.equal(splits.test_y, reference.test_y)
    assert (data_dir / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()
    mirror[0].joinpath("train-images-idx3-ubyte.gz").unlink()  # present files are not fetched again
    load_splits("fa-mnist", data_dir, val_size=50, download=True)


def test_download_fetches_cifar10(tmp_path, mirror, monkeypatch):
    folder, url = mirror
    batches = write_cifar(folder / "made") / "cifar-10-batches-py"
    with open(batches / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(batches, arcname="cifar-10-batches-py")
    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "url", url + "cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar, "tgz_md5", md5(folder / "cifar-10-python.tar.gz"))
    monkeypatch.setattr(cifar, "train_list", [[n, md5(batches / n)] for n in CIFAR_NAMES[:-1]])
    monkeypatch.setattr(cifar, "test_list", [["test_batch", md5(batches / "test_batch")]])
    monkeypatch.setattr(cifar, "meta", {**cifar.meta, "md5": md5(batches / "batches.meta")})
    splits = load_splits("cifar10", tmp_path / "data", val_size=20, download=True)
    assert splits.train_x.shape == (5 * 60 - 20, 3, 32, 32) and splits.num_classes == 10


def test_a_corrupt_archive_is_a_user_error(tmp_path, mirror, monkeypatch):
    serve_fashion_mnist(mirror, monkeypatch, corrupt="t10k-labels-idx1-ubyte.gz")
    with pytest.raises(UserError, match="could not download fa-mnist"):
        load_splits("fa-mnist", tmp_path / "data", val_size=50, download=True)


def test_without_network_the_error_says_what_to_copy_where(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{port}/"])
    with pytest.raises(UserError) as error:
        load_splits("fa-mnist", tmp_path, download=True)
    message = str(error.value)
    assert "could not download fa-mnist" in message and "FashionMNIST/raw/, or pass --data-dir" in message
    assert "\n" not in message
