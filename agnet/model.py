"""AGNet (paper §III, Fig. 2-3, Eq. 1, 3, 5) on a ResNet trunk (torchvision's layout, :mod:`agnet.resnet`).

Shapes for a ResNet-50 at 224 x 224 input (C = 2048 channels, h = w = 7, D = embedding_dim):

    x (B, 3, 224, 224)
    └─ shared stem: conv1 … layer3                     s  (B, 1024, 14, 14)
       ├─ attribute layer4                            fa (B, C, h, w)   ("fr" of Eq. 1)
       │    M   = Softmax_C(Conv1x1(GAP(fa)))          M  (B, C, 1, 1)   Eq. 1, sums to 1 over C
       │    fm  = fa ⊗ (C·M)                          fm (B, C, h, w)
       │    e_attr = BN(Linear(GAP(fm)))              (B, D) → colour (B, n_colors), type (B, n_types)
       └─ category layer4                             fc (B, C, h, w)
            fattr = fc ⊗ Conv1x1(C·M)                 Eq. 3
            fcs   = fc + fattr                        shortcut
            e_id  = BN(Linear(GAP(fcs)))              (B, D) → identity (B, n_classes)
    verification on a pair: Linear(BN((e_id¹ − e_id²)²)) → (P, 2)   §III.D; class 1 = same vehicle
    descriptors (Eq. 5): Attr = e_attr, ID = e_id, All = [e_attr, (1 − α)·e_id]  (B, 2D)

Every choice the paper leaves open (the shared stem and duplicated layer4, the C·M scaling, the
embedding layers, where the verification head reads from) is argued in ``docs/paper-mapping.md``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from agnet.resnet import BasicBlock, ResNet, resnet

BACKBONES = ("resnet18_narrow", "resnet18", "resnet34", "resnet50", "resnet101")


def build_trunk(backbone: str) -> nn.Module:
    """A ResNet trunk (conv1 … layer4, no classifier) with random weights.

    ``resnet18_narrow`` is ResNet-18 at a quarter of the width (16-32-64-128 channels), a fast trunk for tests
    and demos; the others are torchvision's networks (built by :mod:`agnet.resnet`, bit-identical weights).
    """
    if backbone == "resnet18_narrow":
        return ResNet(BasicBlock, [2, 2, 2, 2], widths=(16, 32, 64, 128), with_classifier=False)
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r} (expected one of {', '.join(BACKBONES)})")
    trunk = resnet(backbone)
    trunk.fc = nn.Identity()
    return trunk


def trunk_channels(trunk: nn.Module) -> int:
    """Channels C of the trunk's last stage."""
    block = trunk.layer4[-1]
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features


class Embedding(nn.Module):
    """GAP'ed feature map → D-dim embedding: Linear + BatchNorm1d (the "1 × 1 × 4096" features)."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(channels, dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)
        nn.init.kaiming_normal_(self.linear.weight, mode="fan_out")

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(torch.flatten(F.adaptive_avg_pool2d(feature_map, 1), 1)))


class AGNet(nn.Module):
    """Attribute-Guided Network. ``forward`` returns a dict (see the module docstring for shapes)."""

    def __init__(self, trunk: nn.Module, num_classes: int, num_colors: int, num_types: int, embedding_dim: int):
        super().__init__()
        channels = trunk_channels(trunk)
        self.channels = channels
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1, trunk.layer2, trunk.layer3)
        self.attr_layer4 = trunk.layer4
        self.cat_layer4 = copy.deepcopy(trunk.layer4)  # same (pretrained) start, trained separately
        self.mask_conv = nn.Conv2d(channels, channels, kernel_size=1)  # Eq. 1
        self.guide_conv = nn.Conv2d(channels, channels, kernel_size=1)  # Eq. 3
        self.attr_embedding = Embedding(channels, embedding_dim)
        self.id_embedding = Embedding(channels, embedding_dim)
        self.color_head = nn.Linear(embedding_dim, num_colors)
        self.type_head = nn.Linear(embedding_dim, num_types)
        self.id_head = nn.Linear(embedding_dim, num_classes)
        self.verify_bn = nn.BatchNorm1d(embedding_dim)  # keeps the squared differences at unit scale
        self.verify_head = nn.Linear(embedding_dim, 2)  # the 1 x 1 convolution on the D x 1 x 1 square layer
        for head in (self.color_head, self.type_head, self.id_head, self.verify_head):
            nn.init.normal_(head.weight, std=0.001)
            nn.init.zeros_(head.bias)

    def attribute_mask(self, fa: torch.Tensor) -> torch.Tensor:
        """Eq. 1: M = Softmax over channels of Conv1x1(GAP(fa)); (B, C, 1, 1), each sums to 1."""
        return torch.softmax(self.mask_conv(F.adaptive_avg_pool2d(fa, 1)), dim=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.stem(images)
        fa = self.attr_layer4(shared)
        fc = self.cat_layer4(shared)
        mask = self.attribute_mask(fa)
        scaled_mask = mask * self.channels  # mean weight 1: the attended map keeps fa's magnitude
        fm = fa * scaled_mask
        e_attr = self.attr_embedding(fm)
        fattr = fc * self.guide_conv(scaled_mask)  # Eq. 3
        e_id = self.id_embedding(fc + fattr)  # shortcut fcs = fc + fattr
        return {
            "mask": mask,
            "e_attr": e_attr,
            "e_id": e_id,
            "color_logits": self.color_head(e_attr),
            "type_logits": self.type_head(e_attr),
            "id_logits": self.id_head(e_id),
        }

    def verify(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """§III.D: square layer (e1 − e2)² on the D-dim identity embeddings → (P, 2) logits, class 1 = same.

        Always computed in float32, also under autocast: squaring bf16 differences of near-identical
        embeddings (the positives) would keep about 3 significant digits of a small number.
        """
        with torch.autocast(e1.device.type, enabled=False):
            return self.verify_head(self.verify_bn((e1.float() - e2.float()).pow(2)))


def branch_descriptors(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The two branch descriptors of Tables III/IV, Attr and ID; the third, All = [f_attr, (1 − α)·f_id] (Eq. 5),
    is built from them at evaluation (:func:`agnet.extract.fuse_all`), so α is an evaluation setting."""
    return {"Attr": outputs["e_attr"], "ID": outputs["e_id"]}
