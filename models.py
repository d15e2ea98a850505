"""Child networks trained by the environment: MLP, LeNet-5, ResNet-18 and random classifiers.

Every model maps uint8-derived float images (N, C, H, W) in [0, 1] to class logits and
ends in an ``nn.Linear`` whose weight matrix the controller observes (alrs.controller.output_layer_name).

A random classifier is named by its layers (``rc-`` and dash-separated parts, in any order after
the layers): ``c<out>k<kernel>`` a convolution (then batch norm, the activation and a 2x2 max-pool
while the image is at least 4 pixels), ``d<width>`` a dense hidden layer, one activation of
ACTIVATIONS (default relu), ``bn`` for batch norm after every hidden layer, ``p<rate>`` for dropout
before the output layer. ``rc-c8k3-c16k5-d64-elu-bn-p0.2``; ``rc-linear`` is softmax regression.
tasks.family_task draws them.
"""
import re

from torch import nn

ARCHITECTURES = ("mlp", "cnn", "resnet")  # the fixed children; random classifiers are named "rc-..."
ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "prelu": nn.PReLU, "linear": nn.Identity}
RANDOM_PREFIX = "rc-"


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


class RandomClassifier(nn.Module):
    """A classifier named by its layers (see the module's docstring): convolutions, dense layers, the output."""

    def __init__(self, spec, in_channels, image_size, num_classes=10):
        super().__init__()
        convs, dense, activation, batch_norm, dropout = parse_random_architecture(spec)
        layers, channels, (height, width) = [], in_channels, image_size
        for out, kernel in convs:
            layers += [nn.Conv2d(channels, out, kernel, padding=kernel // 2)]
            layers += [nn.BatchNorm2d(out)] if batch_norm else []
            layers += [ACTIVATIONS[activation]()]
            if min(height, width) >= 4:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out
        layers.append(nn.Flatten())
        features = channels * height * width
        for size in dense:
            layers += [nn.Linear(features, size)] + ([nn.BatchNorm1d(size)] if batch_norm else [])
            layers.append(ACTIVATIONS[activation]())
            features = size
        if dropout and (convs or dense):
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(features, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def parse_random_architecture(spec):
    """A random classifier's name as (convs [(out, kernel)], dense [width], activation, batch_norm,
    dropout); a name that is not one is a ValueError saying which part is wrong."""
    if not spec.startswith(RANDOM_PREFIX):
        raise ValueError(f"{spec!r} is not a random classifier (rc-...)")
    convs, dense, activation, batch_norm, dropout = [], [], "relu", False, 0.0
    for part in spec[len(RANDOM_PREFIX):].split("-"):
        if match := re.fullmatch(r"c(\d+)k(\d+)", part):
            convs.append((int(match[1]), int(match[2])))
        elif match := re.fullmatch(r"d(\d+)", part):
            dense.append(int(match[1]))
        elif match := re.fullmatch(r"p(0?\.\d+)", part):
            dropout = float(match[1])
        elif part in ACTIVATIONS:
            activation = part
        elif part == "bn":
            batch_norm = True
        else:
            raise ValueError(f"{spec!r}: {part!r} is none of c<out>k<kernel>, d<width>, p<dropout>, bn, "
                             + ", ".join(ACTIVATIONS))
    if any(out < 1 or kernel < 1 for out, kernel in convs) or any(width < 1 for width in dense):
        raise ValueError(f"{spec!r}: layer sizes must be positive")
    return convs, dense, activation, batch_norm, dropout


def check_architecture(name):
    """``name`` if it names a child network, else a ValueError naming the valid ones."""
    if name in ARCHITECTURES:
        return name
    if name.startswith(RANDOM_PREFIX):
        parse_random_architecture(name)
        return name
    raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)} or a random "
                     "classifier rc-... (models.py)")


def resnet18_child(in_channels, num_classes=10):
    """torchvision's ResNet-18 (7x7/2 stem, max-pool, BasicBlock [2, 2, 2, 2]) for 1 or 3 channels."""
    from torchvision.models import resnet18  # only here: torchvision's models take seconds to import
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
    if architecture.startswith(RANDOM_PREFIX):
        return RandomClassifier(architecture, in_channels, image_size, num_classes)
    raise ValueError(f"unknown architecture {architecture!r}; choose from {', '.join(ARCHITECTURES)}")


def has_buffers(model):
    """True for models with BatchNorm statistics, which cannot be trained under torch.func.vmap."""
    return any(True for _ in model.buffers())
