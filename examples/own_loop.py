"""Train your own model with a learned learning-rate schedule: a plain PyTorch loop plus ALRSScheduler.

    python examples/own_loop.py --data-dir data                         # Fashion-MNIST, raw or .gz IDX files
    python examples/own_loop.py --data-dir data --download             # fetch it first (needs internet)
    python examples/own_loop.py --image-folder my_images --steps 2000  # my_images/{train,test}/<class>/*.png
    python examples/own_loop.py --data-dir data --constant              # the same loop at a constant rate

The data come from the project's loader (data.load_splits), which reads the files torchvision
downloads as they are, so the example runs offline. The pretrained controller
(alrs/pretrained/fa-mnist_mlp_stable.md) was trained on a 784-256-128-10 MLP with Adam, batch 128 and
2000 validation images; the closer your setting is to that, the closer you are to what it was tested on.
"""
import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in a clone
from data import load_splits  # noqa: E402
from alrs import ALRSScheduler  # noqa: E402
from utils import run_cli  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="folder holding FashionMNIST/raw/ (raw or .gz IDX files)")
    parser.add_argument("--download", action="store_true", help="download Fashion-MNIST if missing")
    parser.add_argument("--image-folder", default=None, help="use train/<class>/* and test/<class>/* images instead")
    parser.add_argument("--controller", default="fa-mnist_mlp_stable",
                        help="a pretrained controller's name, or a checkpoint of train.py")
    parser.add_argument("--lr", type=float, default=1e-3, help="initial learning rate")
    parser.add_argument("--steps", type=int, default=1000, help="training steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--val-size", type=int, default=2000, help="validation images (the final loss is over all)")
    parser.add_argument("--watch", type=int, default=256,
                        help="of them, how many the scheduler's pass every 10 steps runs over (its val_size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=100, help="steps between printed lines")
    parser.add_argument("--constant", action="store_true", help="no scheduler: keep --lr (for comparison)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    splits = load_splits(args.image_folder or "fa-mnist", args.data_dir, val_size=args.val_size, device=device,
                         download=args.download)  # uint8 images (N, C, H, W) and labels
    train_loader = DataLoader(TensorDataset(splits.train_x, splits.train_y), args.batch_size, shuffle=True,
                              drop_last=True)
    val_data = (to_float(splits.val_x), splits.val_y)

    model = nn.Sequential(nn.Flatten(), nn.Linear(splits.in_channels * math.prod(splits.image_size), 256), nn.ReLU(),
                          nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, splits.num_classes)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = None
    if not args.constant:
        options = {"total_steps": args.steps,  # used by controllers that observe the fraction of the run done
                   "val_size": args.watch}
        scheduler = (ALRSScheduler(optimizer, model, args.controller, val_data, **options)
                     if args.controller.endswith(".pt")
                     else ALRSScheduler.from_pretrained(args.controller, optimizer, model, val_data, **options))

    step = 0
    while step < args.steps:
        for images, labels in train_loader:
            loss = F.cross_entropy(model(to_float(images)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler:
                scheduler.step(loss)
            step += 1
            if step % args.log_every == 0 or step == args.steps:
                print(f"step {step:5d}  train loss {loss.item():.4f}  validation loss "
                      f"{validation_loss(model, *val_data):.4f}  lr {optimizer.param_groups[0]['lr']:.2e}")
            if step == args.steps:
                break


def to_float(images):
    """uint8 images as floats in [0, 1], torchvision's ToTensor scaling."""
    return images.float() / 255


@torch.no_grad()
def validation_loss(model, images, labels):
    model.eval()
    loss = sum(F.cross_entropy(model(x), y, reduction="sum").item()
               for x, y in zip(images.split(1000), labels.split(1000)))
    model.train()
    return loss / len(labels)


if __name__ == "__main__":
    run_cli(main)
