"""Child networks (models.py): output shapes, LeNet-5 / MLP / ResNet-18 structure, helpers."""
import pytest
import torch
from torch import nn

from alrs.controller import output_layer_name
from models import ARCHITECTURES, build_model, has_buffers

# (channels, height/width, classes): MNIST-likes, CIFAR-10, and ImageFolder-like sets
SHAPES = [(1, 28, 10), (3, 32, 10), (3, 40, 3), (1, 64, 5)]


def build(architecture, channels, size, classes, seed=0):
    torch.manual_seed(seed)
    return build_model(architecture, channels, (size, size), classes)


def leaves(module):
    return [m for m in module.modules() if not list(m.children())]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("channels,size,classes", SHAPES)
def test_output_shape(architecture, channels, size, classes):
    model = build(architecture, channels, size, classes).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("channels,size,classes", SHAPES)
def test_mlp_structure(channels, size, classes):
    linears = [m for m in leaves(build("mlp", channels, size, classes)) if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (channels * size * size, 256), (256, 128), (128, classes)]
    kinds = [type(m) for m in leaves(build("mlp", channels, size, classes))]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


# side of the last conv's output, by hand: 28 padded to 32 -> 28 -> 14 -> 10 -> 5 -> 1;
# 32 -> 28 -> 14 -> 10 -> 5 -> 1; 40 -> 36 -> 18 -> 14 -> 7 -> 3; 64 -> 60 -> 30 -> 26 -> 13 -> 9
@pytest.mark.parametrize("channels,size,classes,padding,side",
                         [(1, 28, 10, 2, 1), (3, 32, 10, 0, 1), (3, 40, 3, 0, 3), (1, 64, 5, 0, 9)])
def test_lenet5_structure(channels, size, classes, padding, side):
    model = build("cnn", channels, size, classes)
    described = []
    for m in leaves(model):
        if isinstance(m, nn.Conv2d):
            described.append(("conv", m.in_channels, m.out_channels, m.kernel_size, m.padding, m.stride))
        elif isinstance(m, nn.Linear):
            described.append(("fc", m.in_features, m.out_features))
        elif isinstance(m, nn.MaxPool2d):
            described.append(("pool", m.kernel_size))
        else:
            described.append(type(m).__name__)
    assert described == [
        ("conv", channels, 6, (5, 5), (padding, padding), (1, 1)), "ReLU", ("pool", 2),
        ("conv", 6, 16, (5, 5), (0, 0), (1, 1)), "ReLU", ("pool", 2),
        ("conv", 16, 120, (5, 5), (0, 0), (1, 1)), "ReLU",
        "Flatten", ("fc", 120 * side * side, 84), "ReLU", ("fc", 84, classes)]


@pytest.mark.parametrize("size", [8, 24, 30, 31])
def test_lenet5_rejects_too_small_images(size):
    with pytest.raises(ValueError, match="LeNet-5"):
        build_model("cnn", 1, (size, size), 10)


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ValueError, match="mlp, cnn, resnet"):
        build_model("vgg", 3, (32, 32), 10)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("channels,size,classes", [(1, 28, 10), (3, 40, 3)])
def test_output_layer_is_the_last_linear_and_produces_the_logits(architecture, channels, size, classes):
    model = build(architecture, channels, size, classes).eval()
    name = output_layer_name(model)
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Linear) and layer.out_features == classes
    assert name == [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    seen = []
    layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    with torch.no_grad():
        logits = model(torch.rand(3, channels, size, size))
    assert torch.equal(seen[0], logits)


@pytest.mark.parametrize("architecture,expected", [("mlp", False), ("cnn", False), ("resnet", True)])
def test_has_buffers_only_for_resnet(architecture, expected):
    assert has_buffers(build(architecture, 3, 32, 10)) is expected


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_takes_the_datasets_channels_and_classes(channels):
    """torchvision's ResNet-18 (11,181,642 parameters with 10 classes) with a stem for ``channels``
    (a 1-channel stem has 64 * 2 * 7 * 7 fewer weights) and a 10-way head."""
    model = build("resnet", channels, 32, 10)
    assert (model.conv1.in_channels, model.fc.out_features) == (channels, 10)
    assert sum(p.numel() for p in model.parameters()) == 11_181_642 - (3 - channels) * 64 * 7 * 7
