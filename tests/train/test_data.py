"""Pair sampling, augmentation determinism and loading of the training data (agnet.train.data)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from agnet.data.manifest import make_manifest, read_manifest
from agnet.data.synth.veri import synth_veri
from agnet.errors import AgnetError
from agnet.train.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecodedCache,
    ImageError,
    PairSampler,
    PlanBatchSampler,
    TrainSet,
    make_loader,
    normalise_on_device,
    to_tensor,
)
from agnet.train.settings import TrainSettings

SIZE = (32, 24)  # (H, W): non-square so that a transposed resize would show


def settings(workers: int = 0, hflip: bool = True, batch_size: int = 8) -> TrainSettings:
    return TrainSettings(
        variant="test", backbone="resnet50", pretrained="none", input_size=SIZE, embedding_dim=8, epochs=1,
        lr=0.1, lr_milestones=(1,), lr_gamma=0.1, momentum=0.9, weight_decay=0.0, batch_size=batch_size,
        positive_fraction=0.5, hard_negative_fraction=0.5,
        loss_weights={"category": 1.0, "attributes": 1.0, "verify": 1.0}, verification_loss="als",
        als={"theta": 0.2, "alpha": 0.1, "beta": 1.0}, hflip=hflip, decoded_cache=False, workers=workers, amp="off",
        channels_last="off", deterministic=True, log_every=1,
    )


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> tuple[pd.DataFrame, dict]:
    base = tmp_path_factory.mktemp("train-data")
    root = synth_veri(base / "VeRi", vehicles=12, cameras=4, seed=0, workers=1)
    make_manifest("veri", root, base / "veri.parquet")
    return read_manifest(base / "veri.parquet")


@pytest.fixture(scope="module")
def train(manifest) -> TrainSet:
    frame, meta = manifest
    return TrainSet.from_manifest(frame, meta["root"])


def arrays_set(images_per_class, colors=None, types=None) -> TrainSet:
    """A TrainSet from label arrays only (no image files): for sampling statistics."""
    cls = np.repeat(np.arange(len(images_per_class)), images_per_class)
    col = None if colors is None else np.repeat(colors, images_per_class)
    typ = None if types is None else np.repeat(types, images_per_class)
    return TrainSet([f"/none/{i}.jpg" for i in range(len(cls))], cls, col, typ)


def pairs_of(plan):
    anchors = np.concatenate([b.indices[: b.pairs] for b in plan])
    partners = np.concatenate([b.indices[b.pairs :] for b in plan])
    return anchors, partners, np.concatenate([b.same for b in plan]), np.concatenate([b.hard for b in plan])


def same_plan(a, b) -> bool:
    return len(a) == len(b) and all(
        x.step == y.step and np.array_equal(x.indices, y.indices) and np.array_equal(x.same, y.same)
        and np.array_equal(x.hard, y.hard) for x, y in zip(a, b, strict=True)
    )


# --- TrainSet ---------------------------------------------------------------------------------


def test_trainset_from_manifest(manifest, train):
    frame, _ = manifest
    rows = frame[frame["split"] == "train"]
    assert len(train) == len(rows) and train.num_classes == rows["class_id"].nunique()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in train.paths)
    assert train.class_ids.dtype == np.int64 and train.color_ids.dtype == np.int64 and train.type_ids.dtype == np.int64
    np.testing.assert_array_equal(train.class_ids, rows["class_id"].to_numpy(dtype=np.int64))
    np.testing.assert_array_equal(train.color_ids, rows["color_id"].to_numpy(dtype=np.int64))


def test_trainset_maps_missing_attributes_to_minus_one(manifest):
    frame, meta = manifest
    frame = frame.copy()
    train_rows = frame.index[frame["split"] == "train"]
    frame.loc[train_rows[:3], "color_id"] = pd.NA
    frame.loc[train_rows[2:5], "type_id"] = pd.NA
    train = TrainSet.from_manifest(frame, meta["root"])
    assert train.color_ids[:3].tolist() == [-1, -1, -1] and (train.color_ids[3:] >= 0).all()
    assert train.type_ids[2:5].tolist() == [-1, -1, -1] and (train.type_ids[5:] >= 0).all()
    assert train.color_ids.max() == frame["color_id"].max()  # no invented class


def test_trainset_refuses_bad_input(manifest):
    frame, meta = manifest
    with pytest.raises(AgnetError, match="no 'train' rows"):
        TrainSet.from_manifest(frame[frame["split"] != "train"], meta["root"])
    with pytest.raises(AgnetError, match="contiguous"):
        TrainSet(["a", "b", "c"], [0, 2, 2])
    with pytest.raises(AgnetError, match="empty"):
        TrainSet([], [])


# --- PairSampler ------------------------------------------------------------------------------


def test_plan_is_deterministic_and_varies():
    data = arrays_set([5] * 20, colors=np.arange(20) % 3, types=np.arange(20) % 2)
    plan = PairSampler(data, 8, 0.5, 0.5, seed=3).plan(0)
    other = PairSampler(data, 8, 0.5, 0.5, seed=3)
    other.plan(7)  # history must not matter
    assert same_plan(plan, other.plan(0))
    assert not same_plan(plan, other.plan(1))
    assert not same_plan(plan, PairSampler(data, 8, 0.5, 0.5, seed=4).plan(0))
    assert all(not b.indices.flags.writeable for b in plan)  # the cached plan cannot be altered


@pytest.mark.parametrize("images, steps", [(100, 25), (101, 25), (102, 25), (103, 25), (104, 26)])
def test_every_image_is_an_anchor_at_most_once_and_every_batch_is_full(images, steps):
    data = arrays_set([1] * (images % 10) + [10] * (images // 10))
    assert len(data) == images
    sampler = PairSampler(data, 8, 0.5, 0.5, seed=0)
    plan = sampler.plan(2)
    assert sampler.steps_per_epoch == len(plan) == steps
    assert [b.step for b in plan] == list(range(steps))
    assert all(b.pairs == 4 and len(b.indices) == 8 for b in plan)  # the incomplete rest is dropped
    anchors = pairs_of(plan)[0]
    assert len(set(anchors.tolist())) == len(anchors) == sampler.anchors_per_epoch == 4 * steps
    # the dropped rest differs between epochs (the order is reshuffled), so no image is left out for good
    left_out = [set(range(images)) - set(pairs_of(sampler.plan(e))[0].tolist()) for e in range(6)]
    assert all(len(s) == images % 4 for s in left_out)
    if images % 4:
        assert len(set.union(*left_out)) > images % 4


def test_pairs_respect_their_labels():
    rng = np.random.default_rng(0)
    counts = [1, 1] + rng.integers(2, 9, 40).tolist()
    colors, types = rng.integers(0, 3, 42), rng.integers(0, 2, 42)
    colors[5] = -1
    data = arrays_set(counts, colors, types)
    anchors, partners, same, hard = pairs_of(PairSampler(data, 16, 0.5, 0.5, seed=1).plan(0))
    cls, col, typ = data.class_ids, data.color_ids, data.type_ids
    np.testing.assert_array_equal(same, cls[anchors] == cls[partners])
    expected_hard = (cls[anchors] != cls[partners]) & (col[anchors] >= 0) & (typ[anchors] >= 0)
    expected_hard &= (col[anchors] == col[partners]) & (typ[anchors] == typ[partners])
    np.testing.assert_array_equal(hard, expected_hard)
    assert hard.any() and same.any() and (~same).any()
    singleton = np.isin(anchors, [0, 1])  # classes 0 and 1 have one image: paired with themselves
    assert (anchors[same & ~singleton] != partners[same & ~singleton]).all()
    assert (partners[same & singleton] == anchors[same & singleton]).all()
    assert not hard[cls[anchors] == 5].any()  # missing colour: never hard


def test_positive_share_follows_positive_fraction():
    data = arrays_set([6] * 100)
    for fraction in (0.0, 0.3, 1.0):
        same = pairs_of(PairSampler(data, 16, fraction, 0.5, seed=2).plan(0))[2]
        assert len(same) == 600
        assert abs(same.mean() - fraction) < 0.07  # ~ 4 binomial standard deviations


def test_hard_negatives_are_drawn():
    # 60 vehicles in 30 (colour, type) groups of two: a random other image shares both with p = 10/590
    colors, types = np.arange(60) // 2 % 6, np.arange(60) // 12
    data = arrays_set([10] * 60, colors, types)
    chance = 10 / 590
    shares = {}
    for fraction in (0.0, 0.5, 1.0):
        _, _, same, hard = pairs_of(PairSampler(data, 16, 0.2, fraction, seed=5).plan(0))
        shares[fraction] = hard[~same].mean()
    assert shares[0.0] < 0.06
    assert abs(shares[0.5] - (0.5 + 0.5 * chance)) < 0.08
    assert shares[1.0] == 1.0


def test_the_uniform_negatives_arm_draws_pairs_without_reading_attributes():
    """AGNet-CE with uniform negatives (hard_negative_fraction 0, the `agnet_ce_uniform` arm): its pairs are those of
    Only-ID's sampler, whatever the colour and type labels hold — only the attribute loss may read them."""
    rng = np.random.default_rng(4)
    counts = rng.integers(2, 9, 50)
    colors, types = rng.integers(0, 3, 50), rng.integers(0, 2, 50)
    labelled = PairSampler(arrays_set(counts, colors, types), 16, 0.5, 0.0, seed=6).plan(0)
    permuted = PairSampler(arrays_set(counts, rng.permutation(colors), rng.permutation(types)), 16, 0.5, 0.0,
                           seed=6).plan(0)
    unlabelled = PairSampler(arrays_set(counts), 16, 0.5, 0.0, seed=6).plan(0)
    for plan in (permuted, unlabelled):
        a, b = pairs_of(labelled), pairs_of(plan)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])  # the same partners: negatives drawn uniformly


def test_shuffled_hard_flags_keep_the_pairs_and_drop_the_attribute_information():
    """The `agnet_asl_shuffled` arm (als.pairs: shuffled): the same pairs, mined by the true attributes, but ALS's hard
    flags compare the attributes of a seeded permutation of the vehicles."""
    colors, types = np.arange(60) // 2 % 6, np.arange(60) // 12
    data = arrays_set([10] * 60, colors, types)
    true = PairSampler(data, 16, 0.2, 0.5, seed=5)
    shuffled = PairSampler(data, 16, 0.2, 0.5, seed=5, hard_flags="shuffled")
    a, b = pairs_of(true.plan(0)), pairs_of(shuffled.plan(0))
    for k in range(3):
        np.testing.assert_array_equal(a[k], b[k])  # anchors, partners, same: unchanged
    assert not np.array_equal(a[3], b[3])
    # the flags are exactly "different vehicles whose permuted vehicles share colour and type"
    anchors, partners, same = b[:3]
    col, typ = shuffled._flag_color, shuffled._flag_type
    cls = data.class_ids
    assert all(len(set(col[cls == c])) == 1 for c in range(60))  # one (colour, type) per vehicle, another's
    expected = ~same & (col[anchors] == col[partners]) & (typ[anchors] == typ[partners])
    np.testing.assert_array_equal(b[3], expected)
    assert sorted(zip(col[::10], typ[::10])) == sorted(zip(colors, types))  # a permutation of the vehicles'
    again = pairs_of(PairSampler(data, 16, 0.2, 0.5, seed=5, hard_flags="shuffled").plan(0))[3]
    np.testing.assert_array_equal(again, b[3])
    with pytest.raises(AgnetError, match="hard_flags must be one of attributes, shuffled"):
        PairSampler(data, 16, 0.2, 0.5, seed=5, hard_flags="random")


def test_hard_negative_fallback_without_a_twin():
    # vehicle 0 is alone in its colour/type group, vehicle 1 unlabelled: both fall back to random negatives
    data = arrays_set([10] * 6, colors=[0, -1, 1, 1, 2, 2], types=[0, 0, 1, 1, 1, 1])
    anchors, partners, same, hard = pairs_of(PairSampler(data, 8, 0.0, 1.0, seed=0).plan(0))
    assert not same.any()
    lonely = data.class_ids[anchors] <= 1
    assert not hard[lonely].any() and hard[~lonely].all()
    assert (data.class_ids[partners] != data.class_ids[anchors]).all()


def test_batches_resume_mid_epoch():
    sampler = PairSampler(arrays_set([4] * 30), 8, 0.5, 0.5, seed=9)
    plan = sampler.plan(4)
    for k in (0, 1, 17, len(plan)):
        assert same_plan(list(sampler.batches(4, start_step=k)), plan[k:])
    with pytest.raises(AgnetError):
        list(sampler.batches(4, start_step=len(plan) + 1))


def test_sampler_refuses_bad_settings():
    data = arrays_set([3] * 4)
    with pytest.raises(AgnetError, match="even"):
        PairSampler(data, 7, 0.5, 0.5, seed=0)
    with pytest.raises(AgnetError, match="positive_fraction"):
        PairSampler(data, 8, 1.5, 0.5, seed=0)
    with pytest.raises(AgnetError, match="two training vehicles"):
        PairSampler(arrays_set([5]), 8, 0.5, 0.5, seed=0)


# --- loading ----------------------------------------------------------------------------------


def run(train, cfg, epoch=0, start_step=0, seed=11, cache=None):
    sampler = PairSampler(train, cfg.batch_size, 0.5, 0.5, seed=seed)
    return list(make_loader(train, sampler, cfg, epoch, start_step, seed=seed, cache=cache))


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def test_loader_batch_layout(train):
    batches = run(train, settings())
    assert len(batches) == PairSampler(train, 8, 0.5, 0.5, seed=11).steps_per_epoch
    first = batches[0]
    assert first["images"].shape == (8, *SIZE, 3) and first["images"].dtype == torch.uint8  # 1/4 of float32
    for key in ("class_id", "color_id", "type_id", "index"):
        assert first[key].shape == (8,) and first[key].dtype == torch.int64
    for key in ("same", "hard"):
        assert first[key].shape == (4,) and first[key].dtype == torch.bool
    assert [b["step"] for b in batches] == list(range(len(batches)))
    assert {b["epoch"] for b in batches} == {0}
    index = first["index"]
    np.testing.assert_array_equal(first["class_id"].numpy(), train.class_ids[index.numpy()])
    np.testing.assert_array_equal(first["same"].numpy(), (first["class_id"][:4] == first["class_id"][4:]).numpy())
    # normalised exactly as (x / 255 - mean) / std of the bilinear-resized RGB image
    k = int(torch.nonzero(~first["flipped"])[0])
    with Image.open(train.paths[int(index[k])]) as image:
        pixels = np.asarray(image.convert("RGB").resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(first["images"][k].numpy(), pixels)
    on_device = normalise_on_device(first["images"], first["flipped"])
    assert on_device.shape == (8, 3, *SIZE) and on_device.dtype == torch.float32 and on_device.is_contiguous()
    expected = (pixels.astype(np.float32) / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    np.testing.assert_allclose(on_device[k].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    # bit-identical to the per-image CPU path (to_tensor), flipped or not
    for j in range(8):
        assert torch.equal(on_device[j], to_tensor(first["images"][j].numpy(), bool(first["flipped"][j])))
    nhwc = normalise_on_device(first["images"], first["flipped"], channels_last=True)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and torch.equal(nhwc, on_device)
    images = torch.cat([normalise_on_device(b["images"], b["flipped"]) for b in batches])
    assert abs(float(images.mean())) < 1.5 and images.min() < -0.5 and images.max() > 0.5


def test_loader_is_deterministic_across_workers_and_resume(train):
    single = run(train, settings(workers=0), epoch=1)
    assert_same_batches(single, run(train, settings(workers=2), epoch=1))
    assert_same_batches(single[5:], run(train, settings(workers=2), epoch=1, start_step=5))
    other_epoch = run(train, settings(workers=0), epoch=2)
    assert not torch.equal(single[0]["images"], other_epoch[0]["images"])


def test_loader_leaves_global_rng_alone(train):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    run(train, settings(workers=0))
    assert torch.equal(torch.get_rng_state(), state)


def test_hflip(train):
    plain = run(train, settings(hflip=False))
    flipped = run(train, settings(hflip=True))
    assert not any(b["flipped"].any() for b in plain)
    count = total = 0
    for a, b in zip(plain, flipped, strict=True):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["images"], b["images"])  # the loader ships unflipped pixels and the decision
        xs, ys = normalise_on_device(a["images"], a["flipped"]), normalise_on_device(b["images"], b["flipped"])
        for x, y, mirrored in zip(xs, ys, b["flipped"], strict=True):
            assert not torch.equal(x, x.flip(-1))  # the test images are not symmetric
            assert torch.equal(y, x.flip(-1) if mirrored else x)
            count += int(mirrored)
            total += 1
    assert 0.3 < count / total < 0.7


def test_decoded_cache(train, tmp_path):
    cache = DecodedCache.for_trainset(train, SIZE, tmp_path / "cache", threads=2)
    assert cache.built and cache.path.is_file() and cache.array.shape == (len(train), *SIZE, 3)
    assert not list((tmp_path / "cache").glob("*.tmp"))
    again = DecodedCache.for_trainset(train, SIZE, tmp_path / "cache")
    assert not again.built and again.path == cache.path
    other = DecodedCache.for_trainset(train, (16, 16), tmp_path / "cache")
    assert other.built and other.path != cache.path
    reopened = pickle.loads(pickle.dumps(again))  # workers reopen the map instead of copying it
    assert reopened._array is None and np.array_equal(reopened[3], cache[3])
    assert_same_batches(run(train, settings()), run(train, settings(workers=2), cache=again))
    with pytest.raises(AgnetError, match="input_size"):
        run(train, settings(), cache=other)


def test_decoded_cache_is_built_in_chunks_without_mapping_it(train, tmp_path, monkeypatch):
    """The cache is written a few images at a time (never as one writable map that would hold every decoded image
    in the process): across chunk boundaries and a short last chunk, it holds exactly ``np.save`` of the images."""
    from agnet.train import data

    monkeypatch.setattr(data, "_BUILD_CHUNK", 3)
    monkeypatch.setattr(np.lib.format, "open_memmap", None)  # a writable map is not how the cache is built
    paths = train.paths.tolist()[:8]
    cache = DecodedCache(paths, SIZE, tmp_path / "cache", threads=2)
    expected = tmp_path / "expected.npy"
    np.save(expected, np.stack([data.load_resized(p, SIZE) for p in paths]))
    assert cache.path.read_bytes() == expected.read_bytes()


def test_one_loader_spans_epochs(train):
    """One iterator (one set of workers) serves every remaining epoch, each batch tagged with its epoch."""
    cfg = settings(workers=2)
    sampler = PairSampler(train, 8, 0.5, 0.5, seed=11)
    spanning = list(make_loader(train, sampler, cfg, 1, start_step=3, seed=11, end_epoch=3))
    assert len(spanning) == 2 * sampler.steps_per_epoch - 3
    assert_same_batches(spanning[: sampler.steps_per_epoch - 3], run(train, cfg, epoch=1, start_step=3))
    assert_same_batches(spanning[sampler.steps_per_epoch - 3 :], run(train, cfg, epoch=2))
    assert len(PlanBatchSampler(sampler, 1, 3, 3)) == len(spanning)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_bad_image_is_one_clear_error_naming_it(damage, workers, train, tmp_path):
    """A truncated or missing JPEG is one ImageError naming the file, in the process or in a worker."""
    victim = tmp_path / "victim.jpg"
    data = train.paths.tolist()
    if damage == "truncated":
        blob = Path(data[0]).read_bytes()
        victim.write_bytes(blob[: len(blob) // 2])
    broken = TrainSet([str(victim), *data[1:]], train.class_ids, train.color_ids, train.type_ids)
    sampler = PairSampler(broken, 8, 0.5, 0.5, seed=11)
    with pytest.raises(ImageError) as caught:
        list(make_loader(broken, sampler, settings(workers=workers), 0, seed=11))
    message = str(caught.value)
    assert message.startswith(f"{victim}: ") and "\n" not in message
    assert ("not found" if damage == "missing" else "cannot decode") in message
