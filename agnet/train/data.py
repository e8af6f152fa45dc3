"""Training data: the training split, the pair-batch plan, image loading and the DataLoader.

AGNet trains on image *pairs* (paper §III.A): a batch of ``batch_size`` images holds
``P = batch_size // 2`` anchors followed by their ``P`` pair partners (partner ``k`` pairs with
anchor ``k``). The identification losses use all images, the verification head uses the pairs.

Determinism contract (a resumed run replays exactly):

* :meth:`PairSampler.plan` depends only on the training set, ``batch_size``, the two fractions,
  ``seed`` and ``epoch`` (numpy ``SeedSequence([seed, epoch, tag])``).
* The augmentation of one image (the horizontal flip) depends only on
  ``(seed, epoch, step, slot)``, never on the worker id, the worker count or any global RNG, so
  batches are bit-identical with 0 or N workers and when an epoch is resumed at a later step.
* :func:`make_loader` gives the DataLoader its own ``torch.Generator``, so iterating it does not
  advance the global torch RNG either.

Sampling rules (documented choices):

* An epoch is one pass with every training image as an anchor once, in a shuffled order (so an
  epoch processes about 2N images: N anchors and their N partners; docs/paper-mapping.md).
  Anchors are cut into batches of ``P``; a last **incomplete batch is dropped** (fewer than ``P``
  anchors, a different one each epoch as the order is reshuffled). Every step therefore has the
  same batch shape (a compiled step needs it) and BatchNorm's running statistics, which the test
  descriptors use, never take an update from a handful of images (VeRi's 37,778 images would
  otherwise end every epoch with a 4-image batch weighing 10 % in the running statistics).
* With probability ``positive_fraction`` the partner is a uniformly drawn *different* image of
  the same vehicle. A vehicle with a single training image is paired with **that same image**
  (still a positive, ``same=True``): the pair label stays correct and the positive share is kept.
* Otherwise the pair is negative. With probability ``hard_negative_fraction`` the partner is a
  uniformly drawn image of another vehicle with the same colour *and* type as the anchor image
  (both labelled); if the anchor's colour or type is missing, or no other vehicle shares them, it
  falls back to a uniformly drawn image of any other vehicle (as does the remaining share).
  Negatives are uniform over *images* (vehicles with more images are drawn more often).
* ``hard`` flags a pair whose two images differ in vehicle but share colour and type, both
  labelled; a random negative can therefore be hard by chance. With ``hard_flags="shuffled"`` (the ALS ablation
  ``als.pairs: shuffled``) the flags compare the attributes of a seeded permutation of the vehicles instead — each
  vehicle carries another vehicle's (colour, type) — so ALS's attribute term keeps its share of flagged pairs but
  loses the information of which pairs really share attributes; the pairs drawn (and their mining) are unchanged.
* A variant that may not use attributes (Only-ID) builds its :class:`TrainSet` without them
  (every image unlabelled), so it gets no hard negatives and no ``hard`` flags: its negatives are
  uniform over the other vehicles' images, whatever the colour/type columns hold.

BoT's P × K batches (``sampler: pk``, :class:`PKSampler`; issue 25) and random erasing (:func:`erase_decision`,
a pure function of ``(seed, epoch, step, slot)`` like the flip) keep the same determinism contract.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from agnet.errors import AgnetError
from agnet.fileio import atomic_path
from agnet.images import _MEAN, _STD, IMAGENET_MEAN, IMAGENET_STD, ImageError, load_resized, to_tensor  # noqa: F401

_PLAN_TAG = 0x504C414E  # "PLAN": separates the plan stream from the augmentation stream
_SHUFFLE_TAG = 0x53485546  # "SHUF": the permutation of vehicles whose attributes shuffled hard flags compare
HARD_FLAGS = ("attributes", "shuffled")
_AUGMENT_TAG = 0x41554745  # "AUGE"
_ERASE_TAG = 0x45524153  # "ERAS": random erasing's stream
_PK_TAG = 0x504B504B  # "PKPK": the P x K plan's stream
_CACHE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Training split


def _label_array(column: pd.Series) -> np.ndarray:
    """Nullable integer column -> int64 array with -1 for missing."""
    return column.astype("Int64").fillna(-1).to_numpy(dtype=np.int64)


class TrainSet:
    """The training split: absolute image paths and int64 labels (``-1`` = missing attribute).

    ``paths`` is an object array of ``str``; ``class_ids`` must be ``0..num_classes-1`` with every
    class present; ``color_ids``/``type_ids`` are ``-1`` where unlabelled (no class is invented).
    """

    def __init__(self, paths: Sequence[str | Path], class_ids, color_ids=None, type_ids=None):
        self.paths = np.array([str(p) for p in paths], dtype=object)
        n = len(self.paths)
        self.class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        missing = np.full(n, -1, dtype=np.int64)
        self.color_ids = missing.copy() if color_ids is None else np.asarray(color_ids, dtype=np.int64).reshape(-1)
        self.type_ids = missing.copy() if type_ids is None else np.asarray(type_ids, dtype=np.int64).reshape(-1)
        if n == 0:
            raise AgnetError("training set is empty: the manifest has no 'train' rows")
        for name in ("class_ids", "color_ids", "type_ids"):
            if len(getattr(self, name)) != n:
                raise AgnetError(f"training set: {name} has {len(getattr(self, name))} entries for {n} images")
        if self.class_ids.min() < 0:
            raise AgnetError("training set: class ids must be >= 0 (a training row lacks its class_id)")
        self.num_classes = int(self.class_ids.max()) + 1
        present = np.bincount(self.class_ids, minlength=self.num_classes) > 0
        if not present.all():
            absent = np.flatnonzero(~present)
            raise AgnetError(
                f"training set: class ids must be contiguous 0..{self.num_classes - 1}; "
                f"{len(absent)} missing (first: {', '.join(map(str, absent[:5]))})"
            )
        for name in ("color_ids", "type_ids"):
            if getattr(self, name).min() < -1:
                raise AgnetError(f"training set: {name} must be >= 0 or -1 (missing)")
        for array in (self.paths, self.class_ids, self.color_ids, self.type_ids):
            array.setflags(write=False)

    @classmethod
    def from_manifest(cls, frame: pd.DataFrame, root: str | Path, attributes: bool = True) -> TrainSet:
        """The ``split == "train"`` rows of a manifest; ``root`` is ``metadata["root"]``.

        ``attributes=False`` (a variant that must not use colour/type, e.g. Only-ID) never reads the
        ``color_id``/``type_id`` columns: every image is unlabelled, so no loss, pair choice or flag
        downstream can depend on them.
        """
        train = frame.loc[frame["split"] == "train"]
        if train.empty:
            raise AgnetError("manifest has no 'train' rows: nothing to train on")
        if train["class_id"].isna().any():
            raise AgnetError(f"manifest: {int(train['class_id'].isna().sum())} training rows lack a class_id")
        root = Path(root)
        paths = [str(root / p) for p in train["path"].tolist()]
        if not attributes:
            return cls(paths, _label_array(train["class_id"]))
        return cls(paths, _label_array(train["class_id"]), _label_array(train["color_id"]), _label_array(train["type_id"]))

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """SHA-256 over paths and labels (what a checkpoint can store to detect a changed split)."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.paths.tolist()).encode())
        for array in (self.class_ids, self.color_ids, self.type_ids):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Pair plan


@dataclass(frozen=True, eq=False)
class Batch:
    """One planned batch: ``indices`` = P anchors then their P partners (TrainSet positions)."""

    step: int
    indices: np.ndarray  # int64 (2P,)
    same: np.ndarray  # bool (P,): pair shows the same vehicle
    hard: np.ndarray  # bool (P,): different vehicles sharing colour and type (both labelled)
    # P x K batches (PKSampler): per slot, the slot of its positive and of its negative partner (int64 (B,)) and
    # whether the negative pair is hard (bool (B,)); None for the anchor + partner layout
    partners: np.ndarray | None = None  # int64 (B, 2)
    negative_hard: np.ndarray | None = None  # bool (B,)

    @property
    def pairs(self) -> int:
        return len(self.same)


def _floor_pick(u: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``floor(u * n)`` clipped to ``n - 1`` (uniform integer in ``[0, n)`` from ``u`` in [0, 1))."""
    return np.minimum((u * n).astype(np.int64), np.maximum(n - 1, 0))


class PairSampler:
    """Deterministic, resumable plan of pair batches (see the module docstring for the rules)."""

    def __init__(
        self,
        train: TrainSet,
        batch_size: int,
        positive_fraction: float,
        hard_negative_fraction: float,
        seed: int,
        hard_flags: str = "attributes",
    ):
        if hard_flags not in HARD_FLAGS:
            raise AgnetError(f"hard_flags must be one of {', '.join(HARD_FLAGS)}, got {hard_flags!r}")
        if batch_size < 2 or batch_size % 2:
            raise AgnetError(f"batch_size must be an even number >= 2, got {batch_size}")
        for name, value in (("positive_fraction", positive_fraction), ("hard_negative_fraction", hard_negative_fraction)):
            if not 0.0 <= value <= 1.0:
                raise AgnetError(f"{name} must lie in [0, 1], got {value}")
        if train.num_classes < 2 and positive_fraction < 1.0:
            raise AgnetError("negative pairs need at least two training vehicles")
        self.train = train
        self.batch_size = int(batch_size)
        self.pairs_per_batch = self.batch_size // 2
        self.positive_fraction = float(positive_fraction)
        self.hard_negative_fraction = float(hard_negative_fraction)
        self.seed = int(seed)
        self.hard_flags = hard_flags
        if self.steps_per_epoch == 0:
            raise AgnetError(f"training set of {len(train)} image(s) is too small for one pair batch")
        self._index()
        self._cached: tuple[int, list[Batch]] | None = None

    def _index(self) -> None:
        """Per-image lookup arrays so that planning an epoch is a handful of vectorised ops."""
        cls = self.train.class_ids
        n = len(cls)
        counts = np.bincount(cls, minlength=self.train.num_classes)
        starts = np.cumsum(counts) - counts
        self._by_class = np.argsort(cls, kind="stable")  # images grouped by class
        self._cls_start = starts[cls]
        self._cls_count = counts[cls]
        rank = np.empty(n, dtype=np.int64)
        rank[self._by_class] = np.arange(n) - starts[cls[self._by_class]]
        self._rank = rank  # position of each image inside its class block

        color, vtype = self.train.color_ids, self.train.type_ids
        labelled = np.flatnonzero((color >= 0) & (vtype >= 0))
        self._hard_ok = np.zeros(n, dtype=bool)
        self._grp_start = np.zeros(n, dtype=np.int64)
        self._grp_size = np.zeros(n, dtype=np.int64)
        self._blk_start = np.zeros(n, dtype=np.int64)
        self._blk_size = np.zeros(n, dtype=np.int64)
        self._by_group = labelled
        if len(labelled):
            _, group = np.unique(np.stack([color[labelled], vtype[labelled]], axis=1), axis=0, return_inverse=True)
            group = group.reshape(-1).astype(np.int64)
            order = np.lexsort((cls[labelled], group))  # by (colour-type group, class)
            self._by_group = labelled[order]
            group = group[order]
            g_counts = np.bincount(group)
            g_starts = np.cumsum(g_counts) - g_counts
            block_key = group * self.train.num_classes + cls[self._by_group]
            _, b_first, b_inverse, b_counts = np.unique(
                block_key, return_index=True, return_inverse=True, return_counts=True
            )
            images = self._by_group
            self._grp_start[images] = g_starts[group]
            self._grp_size[images] = g_counts[group]
            self._blk_start[images] = b_first[b_inverse]
            self._blk_size[images] = b_counts[b_inverse]
            self._hard_ok[images] = g_counts[group] > b_counts[b_inverse]
        self._flag_color, self._flag_type = color, vtype
        if self.hard_flags == "shuffled":
            self._flag_color, self._flag_type = self._shuffled_attributes()

    def _shuffled_attributes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per image, the (colour, type) of the vehicle a seeded permutation of the classes maps its vehicle to
        (a vehicle's attributes are those of its first image)."""
        cls, classes = self.train.class_ids, self.train.num_classes
        first = np.full(classes, -1, dtype=np.int64)
        first[cls[::-1]] = np.arange(len(cls))[::-1]  # the first image of each class
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _SHUFFLE_TAG]))
        source = first[rng.permutation(classes)]  # class c takes the attributes of class perm[c]
        color = np.where(source >= 0, self.train.color_ids[np.maximum(source, 0)], -1)
        vtype = np.where(source >= 0, self.train.type_ids[np.maximum(source, 0)], -1)
        return color[cls], vtype[cls]

    @property
    def anchors_per_epoch(self) -> int:
        """Images used as anchors per epoch (all but the dropped incomplete last batch's)."""
        return self.steps_per_epoch * self.pairs_per_batch

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch (the incomplete rest is dropped)."""
        return len(self.train) // self.pairs_per_batch

    def plan(self, epoch: int) -> list[Batch]:
        """The batches of ``epoch`` (a pure function of the sampler's inputs, seed and epoch)."""
        if self._cached is not None and self._cached[0] == epoch:
            return list(self._cached[1])
        n = len(self.train)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), _PLAN_TAG]))
        order = rng.permutation(n)
        u = rng.random((4, n))  # drawn for all n, so choices do not depend on the batch size
        kept = self.anchors_per_epoch
        anchor = order[:kept]
        u_kind, u_hard, u_pos, u_neg = u[:, :kept]
        cls = self.train.class_ids

        # positives: a different image of the same class (the image itself for singletons)
        count, rank = self._cls_count[anchor], self._rank[anchor]
        pick = _floor_pick(u_pos, count - 1)
        pick += pick >= rank
        positive = np.where(count > 1, self._by_class[np.minimum(self._cls_start[anchor] + pick, n - 1)], anchor)

        # random negatives: any image outside the anchor's class block
        others = n - count
        pick = _floor_pick(u_neg, others)
        pick += (pick >= self._cls_start[anchor]) * count
        random_neg = self._by_class[np.clip(pick, 0, n - 1)]

        # hard negatives: an image of another class inside the same (colour, type) group
        if len(self._by_group):
            blk_size = self._blk_size[anchor]
            pick = self._grp_start[anchor] + _floor_pick(u_neg, self._grp_size[anchor] - blk_size)
            pick += (pick >= self._blk_start[anchor]) * blk_size
            hard_neg = self._by_group[np.clip(pick, 0, len(self._by_group) - 1)]
        else:
            hard_neg = random_neg
        use_hard = (u_hard < self.hard_negative_fraction) & self._hard_ok[anchor]
        negative = np.where(use_hard, hard_neg, random_neg)

        partner = np.where(u_kind < self.positive_fraction, positive, negative)
        same = cls[anchor] == cls[partner]
        color, vtype = self._flag_color, self._flag_type  # the true attributes, or a shuffled vehicle's
        hard = (
            ~same
            & (color[anchor] >= 0)
            & (vtype[anchor] >= 0)
            & (color[anchor] == color[partner])
            & (vtype[anchor] == vtype[partner])
        )

        p = self.pairs_per_batch
        batches = []
        for step, lo in enumerate(range(0, kept, p)):
            hi = lo + p
            indices = np.concatenate([anchor[lo:hi], partner[lo:hi]]).astype(np.int64)
            pair_same, pair_hard = same[lo:hi].copy(), hard[lo:hi].copy()
            for array in (indices, pair_same, pair_hard):
                array.setflags(write=False)
            batches.append(Batch(step, indices, pair_same, pair_hard))
        self._cached = (int(epoch), batches)
        return list(batches)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The plan of ``epoch`` from ``start_step`` on (resume mid-epoch)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise AgnetError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        yield from self.plan(epoch)[start_step:]


class PKSampler(PairSampler):
    """BoT's P × K batches (Luo et al. 2019; Hermans et al. 2017): P identities, K images each, B = P·K.

    Plan of an epoch (a pure function of the training set, B, K, the hard fraction, seed and epoch, like
    :meth:`PairSampler.plan`): a *round* shuffles each identity's images and cuts them into chunks of K (an
    identity with fewer than K images gives one chunk drawn with replacement; the rest of a shuffled identity that
    does not fill a chunk is left out of the round), as FastReID's/BoT's ``RandomIdentitySampler``; each batch
    then takes one chunk from each of P distinct identities drawn uniformly among those with chunks left; when
    fewer than P have any, a new round starts. An epoch is ``len(train) // B`` batches (about one pass).

    Slots are identity blocks (slot ``p·K + k``). For the verification term (ALS, Eq. 6-7) every slot is paired
    twice inside its batch (2B pairs, half positive): with a uniformly drawn other slot of its own block, and
    with a slot of another identity — with probability ``hard_negative_fraction`` one whose image shares colour
    and type with it (both labelled) when the batch holds one, else uniformly among the other identities' slots.
    ``hard`` flags a negative pair sharing colour and type (the shuffled attributes with ``hard_flags="shuffled"``).
    """

    def __init__(self, train: TrainSet, batch_size: int, instances_per_identity: int, hard_negative_fraction: float,
                 seed: int, hard_flags: str = "attributes"):
        if hard_flags not in HARD_FLAGS:
            raise AgnetError(f"hard_flags must be one of {', '.join(HARD_FLAGS)}, got {hard_flags!r}")
        k = int(instances_per_identity)
        if k < 2 or batch_size % k or batch_size // k < 2:
            raise AgnetError(f"batch_size {batch_size} must be P x K with K = instances_per_identity = {k} >= 2 and "
                             "P >= 2")
        if not 0.0 <= hard_negative_fraction <= 1.0:
            raise AgnetError(f"hard_negative_fraction must lie in [0, 1], got {hard_negative_fraction}")
        self.train = train
        self.batch_size = int(batch_size)
        self.instances = k
        self.identities = self.batch_size // k
        if train.num_classes < self.identities:
            raise AgnetError(f"P x K batches need P = {self.identities} training identities, the training set has "
                             f"{train.num_classes}")
        self.pairs_per_batch = 2 * self.batch_size
        self.positive_fraction = 0.5
        self.hard_negative_fraction = float(hard_negative_fraction)
        self.seed = int(seed)
        self.hard_flags = hard_flags
        if self.steps_per_epoch == 0:
            raise AgnetError(f"training set of {len(train)} image(s) is too small for one P x K batch")
        self._index()
        self._cached = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train) // self.batch_size

    @property
    def anchors_per_epoch(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def _round(self, rng: np.random.Generator) -> list[np.ndarray]:
        """One round's chunks: per identity an int64 (chunks, K) array of image indices."""
        counts = np.bincount(self.train.class_ids, minlength=self.train.num_classes)
        starts = np.cumsum(counts) - counts
        k, chunks = self.instances, []
        for c in range(self.train.num_classes):
            images = rng.permutation(self._by_class[starts[c]:starts[c] + counts[c]])
            if len(images) < k:
                images = rng.choice(images, k, replace=True)
            n = len(images) // k
            chunks.append(images[: n * k].reshape(n, k))
        return chunks

    def _blocks(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The epoch's batches as int64 (P, K) arrays of image indices (one identity per row)."""
        batches: list[np.ndarray] = []
        chunks, used = self._round(rng), np.zeros(self.train.num_classes, dtype=np.int64)
        left = np.array([len(c) for c in chunks], dtype=np.int64)
        while len(batches) < self.steps_per_epoch:
            available = np.flatnonzero(left > 0)
            if len(available) < self.identities:
                chunks, used = self._round(rng), np.zeros_like(used)
                left = np.array([len(c) for c in chunks], dtype=np.int64)
                continue
            picked = rng.choice(available, self.identities, replace=False)
            batches.append(np.stack([chunks[c][used[c]] for c in picked]))
            used[picked] += 1
            left[picked] -= 1
        return batches

    def _pairs(self, indices: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Partner slots (B, 2) = (positive, negative), and whether each negative pair is hard, for one batch."""
        b, k = self.batch_size, self.instances
        slot = np.arange(b)
        block = slot // k
        u_pos, u_hard, u_neg = rng.random((3, b))
        positive = block * k + (slot % k + 1 + _floor_pick(u_pos, np.full(b, k - 1))) % k
        other = block[:, None] != block[None, :]
        color, vtype = self.train.color_ids[indices], self.train.type_ids[indices]
        labelled = (color >= 0) & (vtype >= 0)
        alike = other & labelled[:, None] & labelled[None, :] & (color[:, None] == color[None, :]) \
            & (vtype[:, None] == vtype[None, :])
        use_hard = (u_hard < self.hard_negative_fraction) & alike.any(1)
        candidates = np.where(use_hard[:, None], alike, other)
        rank = _floor_pick(u_neg, candidates.sum(1))  # the rank-th candidate of each row
        negative = (np.cumsum(candidates, axis=1) > rank[:, None]).argmax(1)
        fc, ft = self._flag_color[indices], self._flag_type[indices]
        hard = (fc >= 0) & (ft >= 0) & (fc == fc[negative]) & (ft == ft[negative])
        return np.stack([positive, negative], axis=1).astype(np.int64), hard

    def plan(self, epoch: int) -> list[Batch]:
        """The P × K batches of ``epoch`` (see the class docstring)."""
        if self._cached is not None and self._cached[0] == epoch:
            return list(self._cached[1])
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), _PK_TAG]))
        batches = []
        for step, blocks in enumerate(self._blocks(rng)):
            indices = blocks.reshape(-1).astype(np.int64)
            partners, negative_hard = self._pairs(indices, rng)
            b = self.batch_size
            same = np.concatenate([np.ones(b, dtype=bool), np.zeros(b, dtype=bool)])
            hard = np.concatenate([np.zeros(b, dtype=bool), negative_hard])
            for array in (indices, partners, negative_hard, same, hard):
                array.setflags(write=False)
            batches.append(Batch(step, indices, same, hard, partners, negative_hard))
        self._cached = (int(epoch), batches)
        return list(batches)


def make_sampler(train: TrainSet, settings: Any, seed: int) -> PairSampler:
    """The batch plan of ``settings.sampler``: :class:`PairSampler` (``pairs``) or :class:`PKSampler` (``pk``)."""
    hard_flags = (settings.als or {}).get("pairs", "attributes")
    if getattr(settings, "sampler", "pairs") == "pk":
        return PKSampler(train, settings.batch_size, settings.instances_per_identity,
                         settings.effective_hard_negative_fraction, seed, hard_flags=hard_flags)
    return PairSampler(train, settings.batch_size, settings.positive_fraction,
                       settings.effective_hard_negative_fraction, seed, hard_flags=hard_flags)


# ---------------------------------------------------------------------------------------------
# Images


_ON_DEVICE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as (1, 3, 1, 1) tensors on ``device``, copied there once (a copy from pageable
    host memory would wait for the device)."""
    key = str(device)
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = (_MEAN.view(1, 3, 1, 1).to(device), _STD.view(1, 3, 1, 1).to(device))
    return _ON_DEVICE[key]


def normalise_on_device(images: torch.Tensor, flipped: torch.Tensor, channels_last: bool = False,
                        dtype: torch.dtype = torch.float32, erase: torch.Tensor | None = None) -> torch.Tensor:
    """The loader's uint8 (B, H, W, 3) batch -> ImageNet-normalised (B, 3, H, W), mirrored where ``flipped``.

    Runs where ``images`` already is (the GPU): a quarter of the bytes cross the bus and the host does
    no float work. ``(x / 255 - mean) / std`` in float32 is element-for-element what :func:`to_tensor`
    computes, so a batch is bit-identical to the per-image CPU path. ``channels_last``: the result
    keeps the NHWC layout the uint8 batch arrives in, otherwise it is made contiguous NCHW. ``erase``: int64
    (B, 4) rectangles ``(top, left, height, width)`` of :func:`erase_decision` (height 0: none), set to the
    ImageNet mean (0 after normalisation) in the flipped image.
    """
    x = images.permute(0, 3, 1, 2).to(torch.float32)
    x = torch.where(flipped.view(-1, 1, 1, 1), x.flip(3), x)
    mean, std = _mean_std(x.device)
    x = x.div_(255.0).sub_(mean).div_(std)
    if erase is not None:
        x = x.masked_fill(erase_mask(erase, x.shape[2], x.shape[3]), 0.0)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x if dtype == torch.float32 else x.to(dtype)


def flip_decision(seed: int, epoch: int, step: int, slot: int) -> bool:
    """Whether the image at ``slot`` of ``step`` in ``epoch`` is mirrored (p = 0.5)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(step), int(slot), _AUGMENT_TAG]))
    return bool(rng.random() < 0.5)


# Random erasing (Zhong et al. 2020, as BoT): area share and aspect ratio of the rectangle, tries per image.
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)
_ERASE_TRIES = 100


def erase_decision(seed: int, epoch: int, step: int, slot: int, p: float, height: int, width: int) -> tuple[int, ...]:
    """Random erasing of the image at ``slot`` of ``step`` in ``epoch``: ``(top, left, h, w)``, ``(0, 0, 0, 0)``
    for none. With probability ``p`` a rectangle of area share U(0.02, 0.4) and aspect ratio h/w drawn
    U(0.3, 3.33) that fits the ``height`` × ``width`` image (up to 100 tries), at a uniform position."""
    if p <= 0:
        return (0, 0, 0, 0)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(step), int(slot), _ERASE_TAG]))
    if rng.random() >= p:
        return (0, 0, 0, 0)
    for _ in range(_ERASE_TRIES):
        area = rng.uniform(*ERASE_AREA) * height * width
        aspect = rng.uniform(*ERASE_ASPECT)
        h, w = int(np.rint(np.sqrt(area * aspect))), int(np.rint(np.sqrt(area / aspect)))
        if 0 < h < height and 0 < w < width:
            return (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
    return (0, 0, 0, 0)


def erase_mask(erase: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4) rectangles ``(top, left, h, w)`` → bool (B, 1, height, width), True inside each rectangle."""
    rows = torch.arange(height, device=erase.device)
    cols = torch.arange(width, device=erase.device)
    top, left, h, w = (erase[:, i].view(-1, 1) for i in range(4))
    inside_rows = (rows >= top) & (rows < top + h)  # (B, H)
    inside_cols = (cols >= left) & (cols < left + w)  # (B, W)
    return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


_BUILD_CHUNK = 512  # images decoded per write of the decoded cache


class DecodedCache:
    """Every image of a list decoded once to uint8 ``(N, H, W, 3)`` at ``input_size``, memory-mapped.

    The file ``<cache_dir>/decoded-<key>.npy`` is keyed by a hash of the paths, their sizes and
    modification times, and ``input_size``; it is written through a temporary file and
    ``os.replace``, so a killed build leaves no partial cache. A second construction with the same
    inputs reuses the file (``built`` is then False). The map is opened lazily in each process and
    never pickled. Size: N * H * W * 3 bytes (VeRi's 37,778 training images at 224x224: 5.7 GB).
    """

    def __init__(self, paths: Sequence[str | Path], input_size: tuple[int, int], cache_dir: str | Path,
                 threads: int | None = None):
        self.paths = [str(p) for p in paths]
        self.count = len(self.paths)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.key = self._key(self.paths, self.input_size)
        self.path = Path(cache_dir) / f"decoded-{self.key[:24]}.npy"
        self._array: np.ndarray | None = None
        self.built = False
        if not self._valid():
            self._build(threads or min(16, os.cpu_count() or 1))
            self.built = True

    @classmethod
    def for_trainset(cls, train: TrainSet, input_size: tuple[int, int], cache_dir: str | Path,
                     threads: int | None = None) -> DecodedCache:
        return cls(train.paths.tolist(), input_size, cache_dir, threads)

    @staticmethod
    def _key(paths: list[str], input_size: tuple[int, int]) -> str:
        digest = hashlib.sha256(json.dumps({"version": _CACHE_VERSION, "size": list(input_size)}).encode())
        for path in paths:
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                raise ImageError(f"{path}: image file not found (was the dataset moved or changed? "
                                 "rerun `agnet data verify` on it)") from None
            except OSError as error:
                raise ImageError(f"{path}: cannot read image ({error.strerror})") from None
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.count, *self.input_size, 3)

    def _valid(self) -> bool:
        if not self.path.is_file():
            return False
        try:
            array = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError):
            return False
        return array.shape == self.shape and array.dtype == np.uint8

    def _build(self, threads: int) -> None:
        """Decode every image into the ``.npy`` file, ``_BUILD_CHUNK`` images at a time.

        The file is written with ordinary buffered writes from one chunk-sized buffer, not through a writable
        memory map: a map would hold every written page in the process (measured at release size: 6.7 GB of
        proportional set size for VehicleID's 6.25 GB cache), whereas written file pages belong to the kernel's
        page cache, which reclaims them. The builder's own memory stays at one chunk (~77 MB at 224 x 224).
        """
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": self.shape}
        chunk = np.empty((min(_BUILD_CHUNK, max(1, self.count)), *self.input_size, 3), dtype=np.uint8)

        def decode(slot_index: tuple[int, int]) -> None:
            slot, index = slot_index
            chunk[slot] = load_resized(self.paths[index], self.input_size)

        with atomic_path(self.path) as tmp, tmp.open("wb") as out, ThreadPoolExecutor(max_workers=threads) as pool:
            np.lib.format.write_array_header_1_0(out, header)
            for start in range(0, self.count, chunk.shape[0]):
                stop = min(start + chunk.shape[0], self.count)
                for _ in pool.map(decode, enumerate(range(start, stop))):
                    pass
                chunk[: stop - start].tofile(out)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self.array[index])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None  # reopen in the worker instead of pickling the whole map
        state["paths"] = []  # not needed to read; keeps worker start-up light
        return state


def memory_limit() -> tuple[int, str]:
    """(bytes, where it comes from): the smallest of the limits this job runs under.

    ``AGNET_MEMORY_LIMIT_MB`` wins when set; otherwise the smallest of the cgroup limit (v2 or v1,
    what SLURM and containers enforce), ``SLURM_MEM_PER_NODE`` and the physical memory.
    """
    override = os.environ.get("AGNET_MEMORY_LIMIT_MB")
    if override:
        try:
            return int(float(override) * 2**20), "AGNET_MEMORY_LIMIT_MB"
        except ValueError:
            raise AgnetError(f"AGNET_MEMORY_LIMIT_MB={override!r}: expected a number of MB") from None
    found: list[tuple[int, str]] = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            found.append((int(text), f"cgroup limit {path}"))
    if os.environ.get("SLURM_MEM_PER_NODE", "").isdigit():
        found.append((int(os.environ["SLURM_MEM_PER_NODE"]) * 2**20, "SLURM_MEM_PER_NODE"))
    try:
        found.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"))
    except (ValueError, OSError):
        pass
    return min(found) if found else (2**62, "no limit found")


def choose_cache(setting: bool | str, train: TrainSet, input_size: tuple[int, int], cache_dir: str | Path,
                 threads: int | None = None) -> tuple[DecodedCache | None, str]:
    """The decoded cache for ``training.decoded_cache`` = ``setting`` (True, False or ``"auto"``) and why.

    The cache is memory-mapped; it "fits" when it takes at most half the job's memory limit
    (:func:`memory_limit`; the other half is left to the model, the optimizer and the workers), and
    the cache folder has room for it. ``auto`` uses it when it fits and otherwise decodes JPEGs (the
    returned note says why); ``True`` insists and raises a clear error when it does not fit.
    """
    if setting is False or setting == "false":
        return None, "decoded cache off (training.decoded_cache: false)"
    size = len(train) * int(input_size[0]) * int(input_size[1]) * 3
    limit, source = memory_limit()
    gb = 2**30
    problem = None
    if size > limit // 2:
        problem = (f"needs {size / gb:.1f} GB, more than half the job's memory limit ({limit / gb:.1f} GB, "
                   f"from {source})")
    else:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = DecodedCache._key(train.paths.tolist(), (int(input_size[0]), int(input_size[1])))
        existing = cache_dir / f"decoded-{key[:24]}.npy"
        free = shutil.disk_usage(cache_dir).free
        if not existing.is_file() and free < size + 2**28:
            problem = f"needs {size / gb:.1f} GB in {cache_dir}, which has {free / gb:.1f} GB free"
    if problem is None:
        cache = DecodedCache.for_trainset(train, input_size, cache_dir, threads)
        return cache, f"decoded cache {cache.path} ({size / gb:.2f} GB, {'built' if cache.built else 'reused'})"
    if setting is True or setting == "true":
        raise AgnetError(f"training.decoded_cache: true, but the cache {problem}; set decoded_cache: auto "
                         "(decode JPEGs when it does not fit) or false, or raise the job's memory (mem_mb)")
    return None, f"decoded cache not used: it {problem}; decoding JPEGs every epoch instead"


# ---------------------------------------------------------------------------------------------
# Dataset and loader


class SampleKey(NamedTuple):
    """What the batch sampler hands the dataset for one image of a planned batch."""

    epoch: int
    step: int
    slot: int  # 0..2P-1: anchors first, then partners
    index: int  # TrainSet position
    same: bool  # flags of the pair the slot belongs to (slot % P)
    hard: bool
    partners: tuple[int, int] | None = None  # P x K batches: the slots of its positive and negative partner
    negative_hard: bool = False  # P x K batches: its negative pair shares colour and type


class PairDataset(torch.utils.data.Dataset):
    """Map-style dataset over :class:`SampleKey`: one image as resized uint8 (H, W, 3) and its flip flag.

    Holds only the paths, labels and (optionally) a :class:`DecodedCache`, so forked or spawned
    workers start light. The flip is :func:`flip_decision` of ``(seed, epoch, step, slot)``; it and the
    normalisation are applied on the training device (:func:`normalise_on_device`).
    """

    def __init__(self, train: TrainSet, input_size: tuple[int, int], hflip: bool, seed: int,
                 cache: DecodedCache | None = None, random_erasing: float = 0.0):
        self.random_erasing = float(random_erasing)
        self.paths = train.paths
        self.class_ids = train.class_ids
        self.color_ids = train.color_ids
        self.type_ids = train.type_ids
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.hflip = bool(hflip)
        self.seed = int(seed)
        self.cache = cache
        if cache is not None:
            if cache.input_size != self.input_size:
                raise AgnetError(f"decoded cache is {cache.input_size}, training input_size is {self.input_size}")
            if len(cache) != len(train) or (cache.paths and cache.paths != train.paths.tolist()):
                raise AgnetError("decoded cache was built for a different list of training images")

    def __len__(self) -> int:
        return len(self.paths)

    def pixels(self, index: int) -> np.ndarray:
        """Resized uint8 (H, W, 3) image ``index`` (from the cache when there is one)."""
        if self.cache is not None:
            return self.cache[index]
        return load_resized(self.paths[index], self.input_size)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        key = SampleKey(*key)
        flip = self.hflip and flip_decision(self.seed, key.epoch, key.step, key.slot)
        sample = {
            "image": self.pixels(key.index),
            "index": key.index,
            "class_id": int(self.class_ids[key.index]),
            "color_id": int(self.color_ids[key.index]),
            "type_id": int(self.type_ids[key.index]),
            "flipped": flip,
            "same": key.same,
            "hard": key.hard,
            "epoch": key.epoch,
            "step": key.step,
            "slot": key.slot,
        }
        if self.random_erasing > 0:
            sample["erase"] = erase_decision(self.seed, key.epoch, key.step, key.slot, self.random_erasing,
                                             *self.input_size)
        if key.partners is not None:
            sample["partners"], sample["negative_hard"] = key.partners, key.negative_hard
        return sample


def collate_pairs(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the samples of one planned batch (slot order) into the training batch dict."""
    pairs = len(samples) // 2
    long = torch.int64
    return {
        "images": torch.from_numpy(np.stack([s["image"] for s in samples])),
        "index": torch.tensor([s["index"] for s in samples], dtype=long),
        "class_id": torch.tensor([s["class_id"] for s in samples], dtype=long),
        "color_id": torch.tensor([s["color_id"] for s in samples], dtype=long),
        "type_id": torch.tensor([s["type_id"] for s in samples], dtype=long),
        "flipped": torch.tensor([s["flipped"] for s in samples], dtype=torch.bool),
        "same": torch.tensor([s["same"] for s in samples[:pairs]], dtype=torch.bool),
        "hard": torch.tensor([s["hard"] for s in samples[:pairs]], dtype=torch.bool),
        "epoch": int(samples[0]["epoch"]),
        "step": int(samples[0]["step"]),
    } | _extras(samples)


def _extras(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch keys of the BoT settings: ``erase`` int64 (B, 4) (random erasing on); for P x K batches the pairs
    ``pair_left``/``pair_right`` int64 (2B,) (slots: every slot with its positive, then with its negative) and
    their ``same``/``hard`` bool (2B,)."""
    extras: dict[str, torch.Tensor] = {}
    if "erase" in samples[0]:
        extras["erase"] = torch.tensor([s["erase"] for s in samples], dtype=torch.int64)
    if "partners" in samples[0]:
        b = len(samples)
        partners = torch.tensor([s["partners"] for s in samples], dtype=torch.int64)
        slots = torch.arange(b, dtype=torch.int64)
        extras["pair_left"] = torch.cat([slots, slots])
        extras["pair_right"] = torch.cat([partners[:, 0], partners[:, 1]])
        extras["same"] = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)])
        extras["hard"] = torch.cat([torch.zeros(b, dtype=torch.bool),
                                    torch.tensor([s["negative_hard"] for s in samples], dtype=torch.bool)])
    return extras


class PlanBatchSampler(torch.utils.data.Sampler):
    """Yields the :class:`SampleKey` lists of ``sampler.plan(e)`` for ``e`` in ``epoch .. end_epoch - 1``,
    starting at ``start_step`` of the first (``end_epoch`` defaults to ``epoch + 1``).

    Spanning every remaining epoch of a run lets one DataLoader iterator, and so one set of worker
    processes, serve the whole run: workers start once and prefetch across epoch boundaries.
    """

    def __init__(self, sampler: PairSampler, epoch: int, start_step: int = 0, end_epoch: int | None = None):
        self.sampler = sampler
        self.epoch = int(epoch)
        self.start_step = int(start_step)
        self.end_epoch = self.epoch + 1 if end_epoch is None else int(end_epoch)
        if not 0 <= self.start_step <= sampler.steps_per_epoch:
            raise AgnetError(f"start_step {start_step} outside 0..{sampler.steps_per_epoch}")

    def __len__(self) -> int:
        return max(0, self.end_epoch - self.epoch) * self.sampler.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for epoch in range(self.epoch, self.end_epoch):
            start = self.start_step if epoch == self.epoch else 0
            for batch in self.sampler.batches(epoch, start):
                if batch.partners is not None:
                    partners, negative_hard = batch.partners.tolist(), batch.negative_hard.tolist()
                    yield [SampleKey(epoch, batch.step, slot, int(index), True, False, tuple(partners[slot]),
                                     negative_hard[slot]) for slot, index in enumerate(batch.indices.tolist())]
                    continue
                pairs = batch.pairs
                same, hard = batch.same.tolist(), batch.hard.tolist()
                yield [
                    SampleKey(epoch, batch.step, slot, int(index), same[slot % pairs], hard[slot % pairs])
                    for slot, index in enumerate(batch.indices.tolist())
                ]


def _worker_init(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the training process, which checkpoints and then stops them."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(
    train: TrainSet,
    sampler: PairSampler,
    settings: Any,
    epoch: int,
    start_step: int = 0,
    seed: int | None = None,
    cache: DecodedCache | None = None,
    end_epoch: int | None = None,
    workers: int | None = None,
) -> torch.utils.data.DataLoader:
    """DataLoader over the plan of ``epoch`` (to ``end_epoch - 1``) from ``start_step``; items are batch dicts.

    Keys: ``images`` uint8 (B, H, W, 3), not yet flipped or normalised (:func:`normalise_on_device`
    does both on the training device); ``flipped`` bool (B,); ``class_id``, ``color_id``, ``type_id``,
    ``index`` int64 (B,) (``-1`` = missing attribute); ``same``, ``hard`` bool (B/2,); ``epoch``,
    ``step`` int. ``settings`` needs ``input_size``, ``hflip`` and ``workers`` (a
    :class:`~agnet.train.settings.TrainSettings`; ``workers`` overrides the latter). ``seed`` drives
    augmentation (default: the sampler's seed; a separate stream from the plan). ``len(loader)`` is
    the number of steps left.
    """
    if sampler.train is not train and sampler.train.fingerprint() != train.fingerprint():
        raise AgnetError("make_loader: the sampler was built on a different training set")
    seed = sampler.seed if seed is None else int(seed)
    dataset = PairDataset(train, tuple(settings.input_size), settings.hflip, seed, cache,
                          random_erasing=getattr(settings, "random_erasing", 0.0))
    workers = int(settings.workers if workers is None else workers)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=PlanBatchSampler(sampler, epoch, start_step, end_epoch),
        num_workers=workers,
        collate_fn=collate_pairs,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        # own generator: creating the iterator must not draw from the global torch RNG
        generator=torch.Generator().manual_seed(seed),
    )
