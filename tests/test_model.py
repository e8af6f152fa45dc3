"""AGNet model: shapes of every head and embedding, the mask, gradient flow, descriptors."""

from __future__ import annotations

import pytest
import torch

from agnet.model import AGNet, branch_descriptors, build_trunk, trunk_channels


def tiny(num_classes=7, colors=5, types=4, dim=32, backbone="resnet18_narrow"):
    torch.manual_seed(0)
    return AGNet(build_trunk(backbone), num_classes, colors, types, dim)


def test_output_shapes_of_every_head_and_embedding():
    model = tiny().eval()
    out = model(torch.randn(3, 3, 64, 48))
    assert out["mask"].shape == (3, 128, 1, 1)
    assert out["e_attr"].shape == out["e_id"].shape == (3, 32)
    assert out["color_logits"].shape == (3, 5)
    assert out["type_logits"].shape == (3, 4)
    assert out["id_logits"].shape == (3, 7)
    assert model.verify(out["e_id"][:2], out["e_id"][1:]).shape == (2, 2)


def test_resnet50_gives_the_papers_2048x7x7_map():
    trunk = build_trunk("resnet50")
    assert trunk_channels(trunk) == 2048
    model = AGNet(trunk, 10, 10, 9, 4096).eval()
    with torch.no_grad():
        shared = model.stem(torch.randn(1, 3, 224, 224))
        assert model.attr_layer4(shared).shape == (1, 2048, 7, 7)
        out = model(torch.randn(2, 3, 224, 224))
    assert out["e_id"].shape == (2, 4096) and out["mask"].shape == (2, 2048, 1, 1)


def test_mask_is_a_distribution_over_channels():
    out = tiny().eval()(torch.randn(4, 3, 64, 64))
    mask = out["mask"].squeeze(-1).squeeze(-1)
    assert torch.all(mask >= 0)
    torch.testing.assert_close(mask.sum(1), torch.ones(4))


def test_gradients_reach_both_branches_and_the_shared_trunk():
    model = tiny().train()
    out = model(torch.randn(4, 3, 64, 64))
    loss = out["id_logits"].logsumexp(1).mean() + out["color_logits"].logsumexp(1).mean()
    loss.backward()
    for name in ("stem.0.weight", "attr_layer4.0.conv1.weight", "cat_layer4.0.conv1.weight",
                 "mask_conv.weight", "guide_conv.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_identity_loss_alone_trains_the_attribute_mask():
    """Only-ID keeps the attention structure: the ID loss reaches the mask through Eq. 3."""
    model = tiny().train()
    model(torch.randn(4, 3, 64, 64))["id_logits"].logsumexp(1).mean().backward()
    assert model.mask_conv.weight.grad.abs().sum() > 0
    assert model.attr_layer4[0].conv1.weight.grad.abs().sum() > 0


def test_layer4_copies_start_equal_and_are_independent():
    model = tiny()
    a, b = model.attr_layer4[0].conv1.weight, model.cat_layer4[0].conv1.weight
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_descriptors_follow_eq5():
    from agnet.extract import fuse_all

    out = tiny().eval()(torch.randn(2, 3, 64, 64))
    d = branch_descriptors(out)
    assert set(d) == {"Attr", "ID"}
    assert torch.equal(d["Attr"], out["e_attr"]) and torch.equal(d["ID"], out["e_id"])
    fused = fuse_all(d["Attr"], d["ID"], alpha=0.25)
    assert fused.shape == (2, 64)
    assert torch.equal(fused[:, :32], out["e_attr"])
    torch.testing.assert_close(fused[:, 32:], 0.75 * out["e_id"])


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        build_trunk("vgg16")


def _narrow_reference() -> torch.nn.Module:
    """The demo trunk as it was built before agnet.resnet: torchvision's BasicBlock at 16-32-64-128 channels."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock

    trunk = nn.Module()
    trunk.conv1 = nn.Conv2d(3, 16, kernel_size=7, stride=2, padding=3, bias=False)
    trunk.bn1, trunk.relu = nn.BatchNorm2d(16), nn.ReLU(inplace=True)
    trunk.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    inplanes = 16
    for index, planes in enumerate([16, 32, 64, 128], start=1):
        stride = 1 if index == 1 else 2
        down = None
        if stride != 1 or inplanes != planes:
            down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        setattr(trunk, f"layer{index}", nn.Sequential(BasicBlock(inplanes, planes, stride, down),
                                                      BasicBlock(planes, planes)))
        inplanes = planes
    for module in trunk.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return trunk


@pytest.mark.parametrize("backbone", ["resnet18_narrow", "resnet18", "resnet34", "resnet50", "resnet101"])
def test_trunks_are_torchvisions_networks_with_the_same_random_weights(backbone):
    """agnet.resnet rebuilds torchvision's ResNets without importing torchvision: same parameter names (so
    ImageNet files load strictly), same initialisation and RNG draws (so a seed gives the same weights), same
    forward pass."""
    import torchvision

    torch.manual_seed(3)
    ours = build_trunk(backbone)
    torch.manual_seed(3)
    if backbone == "resnet18_narrow":
        reference = _narrow_reference()
    else:
        reference = getattr(torchvision.models, backbone)(weights=None)
        reference.fc = torch.nn.Identity()
    a, b = ours.state_dict(), reference.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    if backbone in ("resnet18_narrow", "resnet50"):
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(_feature_map(ours.eval(), x), _feature_map(reference.eval(), x))


def _feature_map(trunk, x):
    x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
    return trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(x))))


def test_training_and_extraction_do_not_import_torchvision():
    """torchvision costs seconds per process (its ops import torch._dynamo); the jobs that build a model must
    not pay it."""
    import subprocess
    import sys

    code = ("import sys, agnet.cli, agnet.train.loop, agnet.extract, agnet.evaluate, agnet.model; "
            "from agnet.model import build_trunk; build_trunk('resnet18_narrow'); "
            "sys.exit('torchvision imported' if 'torchvision' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:] or result.stdout
