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

With ``bnneck`` (BoT's trick, issue 25) the ID embedding's BatchNorm is a BNNeck: the triplet loss reads the
feature before it (``f_triplet`` = Linear(GAP(fcs)), (B, D)), the identity classifier (no bias) and the test
descriptor the feature after it (``e_id``); its BN bias is frozen at 0. Without it ``f_triplet`` is ``e_id``.

:class:`BoT` is the Bag-of-Tricks baseline (Luo et al. 2019; issue 25): one layer4, GAP → f_t (B, C), BNNeck →
f_i (B, C), bias-free ID classifier; no attribute branch, so its only descriptor is ID (= f_i, or f_t without
the BNNeck). :func:`build_model` builds either from the training settings.

Every choice the paper leaves open (the shared stem and duplicated layer4, the C·M scaling, the
embedding layers, where the verification head reads from) is argued in ``docs/paper-mapping.md``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from agnet.resnet import BasicBlock, ResNet, resnet, set_last_stride

BACKBONES = ("resnet18_narrow", "resnet18", "resnet34", "resnet50", "resnet101")
ARCHITECTURES = ("agnet", "bot")
# The stored test descriptors each architecture's model gives (All is fused from Attr and ID at evaluation).
ARCHITECTURE_DESCRIPTORS = {"agnet": ("Attr", "ID", "All"), "bot": ("ID",)}


def build_trunk(backbone: str, last_stride: int = 2) -> nn.Module:
    """A ResNet trunk (conv1 … layer4, no classifier) with random weights.

    ``resnet18_narrow`` is ResNet-18 at a quarter of the width (16-32-64-128 channels), a fast trunk for tests
    and demos; the others are torchvision's networks (built by :mod:`agnet.resnet`, bit-identical weights).
    ``last_stride=1``: layer4 does not downsample (:func:`agnet.resnet.set_last_stride`; same weights).
    """
    if backbone == "resnet18_narrow":
        trunk = ResNet(BasicBlock, [2, 2, 2, 2], widths=(16, 32, 64, 128), with_classifier=False)
    elif backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r} (expected one of {', '.join(BACKBONES)})")
    else:
        trunk = resnet(backbone)
        trunk.fc = nn.Identity()
    return set_last_stride(trunk, last_stride) if last_stride != 2 else trunk


def trunk_channels(trunk: nn.Module) -> int:
    """Channels C of the trunk's last stage."""
    block = trunk.layer4[-1]
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features


def freeze_bias(bn: nn.BatchNorm1d) -> nn.BatchNorm1d:
    """A BNNeck's BatchNorm: bias fixed at 0 (not trained), as BoT (Luo et al. 2019, §3.3)."""
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


class Embedding(nn.Module):
    """GAP'ed feature map → D-dim embedding: Linear + BatchNorm1d (the "1 × 1 × 4096" features).

    ``bnneck``: the BatchNorm is a BNNeck (bias frozen at 0); :meth:`project` gives the feature before it."""

    def __init__(self, channels: int, dim: int, bnneck: bool = False):
        super().__init__()
        self.linear = nn.Linear(channels, dim, bias=False)
        self.bn = freeze_bias(nn.BatchNorm1d(dim)) if bnneck else nn.BatchNorm1d(dim)
        nn.init.kaiming_normal_(self.linear.weight, mode="fan_out")

    def project(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → Linear(GAP) (B, D), the feature before the BatchNorm."""
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(feature_map, 1), 1))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.bn(self.project(feature_map))


class AGNet(nn.Module):
    """Attribute-Guided Network. ``forward`` returns a dict (see the module docstring for shapes)."""

    def __init__(self, trunk: nn.Module, num_classes: int, num_colors: int, num_types: int, embedding_dim: int,
                 bnneck: bool = False):
        super().__init__()
        channels = trunk_channels(trunk)
        self.bnneck = bool(bnneck)
        self.channels = channels
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1, trunk.layer2, trunk.layer3)
        self.attr_layer4 = trunk.layer4
        self.cat_layer4 = copy.deepcopy(trunk.layer4)  # same (pretrained) start, trained separately
        self.mask_conv = nn.Conv2d(channels, channels, kernel_size=1)  # Eq. 1
        self.guide_conv = nn.Conv2d(channels, channels, kernel_size=1)  # Eq. 3
        self.attr_embedding = Embedding(channels, embedding_dim)
        self.id_embedding = Embedding(channels, embedding_dim, bnneck=bnneck)
        self.color_head = nn.Linear(embedding_dim, num_colors)
        self.type_head = nn.Linear(embedding_dim, num_types)
        self.id_head = nn.Linear(embedding_dim, num_classes, bias=not bnneck)
        self.verify_bn = nn.BatchNorm1d(embedding_dim)  # keeps the squared differences at unit scale
        self.verify_head = nn.Linear(embedding_dim, 2)  # the 1 x 1 convolution on the D x 1 x 1 square layer
        for head in (self.color_head, self.type_head, self.id_head, self.verify_head):
            nn.init.normal_(head.weight, std=0.001)
            if head.bias is not None:
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
        f_id = self.id_embedding.project(fc + fattr)  # shortcut fcs = fc + fattr
        e_id = self.id_embedding.bn(f_id)
        return {
            "mask": mask,
            "e_attr": e_attr,
            "e_id": e_id,
            "f_triplet": f_id if self.bnneck else e_id,  # what the triplet loss reads (before a BNNeck)
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


class BoT(nn.Module):
    """The BoT baseline (Luo et al. 2019): ResNet trunk → GAP → f_t (B, C) → BNNeck → f_i (B, C) → bias-free
    identity classifier (B, n_classes). ``forward`` returns ``e_id`` (the test descriptor: f_i, or f_t without the
    BNNeck), ``f_triplet`` (f_t) and ``id_logits``; there is no attribute branch and no verification head."""

    def __init__(self, trunk: nn.Module, num_classes: int, bnneck: bool = True):
        super().__init__()
        channels = trunk_channels(trunk)
        self.channels = channels
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1, trunk.layer2, trunk.layer3)
        self.layer4 = trunk.layer4
        self.bnneck = freeze_bias(nn.BatchNorm1d(channels)) if bnneck else None
        self.id_head = nn.Linear(channels, num_classes, bias=False)
        nn.init.normal_(self.id_head.weight, std=0.001)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f_t = torch.flatten(F.adaptive_avg_pool2d(self.layer4(self.stem(images)), 1), 1)
        f_i = f_t if self.bnneck is None else self.bnneck(f_t)
        return {"e_id": f_i, "f_triplet": f_t, "id_logits": self.id_head(f_i)}


def build_model(settings, num_classes: int, num_colors: int, num_types: int, trunk: nn.Module | None = None) -> nn.Module:
    """The network of a :class:`~agnet.train.settings.TrainSettings` (``architecture``, ``backbone``,
    ``last_stride``, ``bnneck``, ``embedding_dim``) on ``trunk`` (default: a fresh random one)."""
    architecture = getattr(settings, "architecture", "agnet")
    last_stride = getattr(settings, "last_stride", 2)
    bnneck = getattr(settings, "bnneck", False)
    trunk = build_trunk(settings.backbone, last_stride) if trunk is None else trunk
    if architecture == "bot":
        return BoT(trunk, num_classes, bnneck=bnneck)
    if architecture != "agnet":
        raise ValueError(f"unknown architecture {architecture!r} (expected one of {', '.join(ARCHITECTURES)})")
    return AGNet(trunk, num_classes, num_colors, num_types, settings.embedding_dim, bnneck=bnneck)


def branch_descriptors(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The branch descriptors of Tables III/IV the model has: Attr and ID (AGNet), ID alone (BoT, no attribute
    branch: no Attr is made up). The third, All = [f_attr, (1 − α)·f_id] (Eq. 5), is built from Attr and ID at
    evaluation (:func:`agnet.extract.fuse_all`), so α is an evaluation setting."""
    if "e_attr" not in outputs:
        return {"ID": outputs["e_id"]}
    return {"Attr": outputs["e_attr"], "ID": outputs["e_id"]}
