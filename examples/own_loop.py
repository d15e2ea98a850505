"""Train your own model with a learned learning-rate schedule: a plain PyTorch loop plus ALRSScheduler.

    python examples/own_loop.py --data-dir data                        # Fashion-MNIST, torchvision layout
    python examples/own_loop.py --data-dir data --download             # fetch it first (needs internet)
    python examples/own_loop.py --image-folder my_images --steps 2000  # my_images/train/<class>/*.png
    python examples/own_loop.py --data-dir data --constant             # the same loop at a constant rate

The pretrained controller (pretrained/fa-mnist_mlp_stable.md) was trained on a 784-256-128-10 MLP
with Adam, batch 128 and 2000 validation images; the closer your setting is to that, the closer you
are to what it was tested on.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, random_split
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in a clone
from scheduler import ALRSScheduler  # noqa: E402

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained" / "fa-mnist_mlp_stable.pt"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="torchvision root holding FashionMNIST/")
    parser.add_argument("--download", action="store_true", help="download Fashion-MNIST if missing")
    parser.add_argument("--image-folder", default=None, help="use train/<class>/* images of 28x28 grey instead")
    parser.add_argument("--controller", default=str(PRETRAINED), help="a controller checkpoint")
    parser.add_argument("--lr", type=float, default=1e-3, help="initial learning rate")
    parser.add_argument("--steps", type=int, default=1000, help="training steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=100, help="steps between printed lines")
    parser.add_argument("--constant", action="store_true", help="no scheduler: keep --lr (for comparison)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    to_tensor = transforms.ToTensor()
    if args.image_folder:
        train_set = datasets.ImageFolder(Path(args.image_folder) / "train",
                                         transforms.Compose([transforms.Grayscale(), to_tensor]))
    else:
        train_set = datasets.FashionMNIST(args.data_dir, train=True, transform=to_tensor, download=args.download)
    train_set, val_set = random_split(train_set, [len(train_set) - args.val_size, args.val_size])
    train_loader = DataLoader(train_set, args.batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(val_set, 1000)

    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, len(train_set.dataset.classes))).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = None if args.constant else ALRSScheduler(optimizer, model, args.controller, val_loader)

    step = 0
    while step < args.steps:
        for images, labels in train_loader:
            loss = F.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler:
                scheduler.step(loss)
            step += 1
            if step % args.log_every == 0 or step == args.steps:
                print(f"step {step:5d}  train loss {loss.item():.4f}  validation loss "
                      f"{validation_loss(model, val_loader, device):.4f}  lr {optimizer.param_groups[0]['lr']:.2e}")
            if step == args.steps:
                break


@torch.no_grad()
def validation_loss(model, loader, device):
    model.eval()
    total = sum(F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum").item() for x, y in loader)
    model.train()
    return total / len(loader.dataset)


if __name__ == "__main__":
    main()
