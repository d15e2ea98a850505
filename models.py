"""Child networks trained by the environment: MLP, LeNet-5 and ResNet-18.

Every model maps uint8-derived float images (N, C, H, W) in [0, 1] to class logits and
ends in an ``nn.Linear`` whose weight matrix the controller observes (see ``output_layer``).
"""
from torch import nn
from torchvision.models import resnet18

ARCHITECTURES = ("mlp", "cnn", "resnet")


class MLP(nn.Module):
    """flatten -> 256 -> 128 -> classes, ReLU between the three linear layers."""

    def __init__(self, in_channels, image_size, num_classes=10):
        super().__init__()
        height, width = image_size
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width, 256), nn.ReLU(),
            nn.Linear(256, 128), nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.layers(x)


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5 (padded by 2 for 28x28 input so both sizes reach 1x1 after the third conv)."""

    def __init__(self, in_channels, image_size, num_classes=10):
        super().__init__()
        height, width = image_size
        padding = 2 if (height, width) == (28, 28) else 0
        out_h, out_w = ((((s + 2 * padding - 4) // 2) - 4) // 2 - 4 for s in (height, width))
        if out_h < 1 or out_w < 1:
            raise ValueError(f"LeNet-5 needs images of at least 32x32 (or 28x28), got {height}x{width}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 120, 5), nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(120 * out_h * out_w, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def resnet18_child(in_channels, num_classes=10):
    """torchvision's ResNet-18 (7x7/2 stem, max-pool, BasicBlock [2, 2, 2, 2]) for 1 or 3 channels."""
    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def build_model(architecture, in_channels, image_size, num_classes=10):
    """The child network named by ``--architecture`` for images of shape (in_channels, *image_size)."""
    if architecture == "mlp":
        return MLP(in_channels, image_size, num_classes)
    if architecture == "cnn":
        return LeNet5(in_channels, image_size, num_classes)
    if architecture == "resnet":
        return resnet18_child(in_channels, num_classes)
    raise ValueError(f"unknown architecture {architecture!r}; choose from {', '.join(ARCHITECTURES)}")


def output_layer_name(model):
    """Name of the last ``nn.Linear``: the output layer whose weights are part of the observation."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1]


def has_buffers(model):
    """True for models with BatchNorm statistics, which cannot be trained under torch.func.vmap."""
    return any(True for _ in model.buffers())
