"""Child networks (models.py): output shapes, LeNet-5 / MLP / ResNet-18 structure, helpers."""
import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from models import ARCHITECTURES, build_model, has_buffers, output_layer_name

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


def test_lenet5_reaches_1x1_for_mnist_and_cifar():
    for channels, size in ((1, 28), (3, 32)):
        model = build("cnn", channels, size, 10)
        assert model.classifier[1].in_features == 120
        assert model.features(torch.zeros(1, channels, size, size)).shape == (1, 120, 1, 1)


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
def test_resnet18_stem_and_blocks(channels):
    model = build("resnet", channels, 32, 10)
    conv1 = model.conv1
    assert (conv1.in_channels, conv1.out_channels) == (channels, 64)
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert isinstance(model.maxpool, nn.MaxPool2d)
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert [len(layer) for layer in layers] == [2, 2, 2, 2]
    assert all(isinstance(block, BasicBlock) for layer in layers for block in layer)
    assert model.fc.out_features == 10
    # torchvision's ResNet-18 with 10 classes has 11,181,642 parameters; a 1-channel stem has
    # 64 * 2 * 7 * 7 fewer weights
    expected = 11_181_642 - (3 - channels) * 64 * 7 * 7
    assert sum(p.numel() for p in model.parameters()) == expected


def test_same_seed_same_weights():
    a, b = build("cnn", 1, 28, 10, seed=3), build("cnn", 1, 28, 10, seed=3)
    c = build("cnn", 1, 28, 10, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.classifier[-1].weight, c.classifier[-1].weight)
