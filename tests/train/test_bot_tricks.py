"""BoT's training settings (issue 25): each trick on when configured and off otherwise — warm-up schedule, random
erasing, P x K batches with in-batch verification pairs, Adam, config errors naming the field, training documents
unchanged for the AGNet variants — and a tiny bot run that trains, reads no attribute label, resumes bit-identically
and extracts the ID descriptor alone."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from agnet.cli import main
from agnet.errors import AgnetError, ConfigError
from agnet.extract import extract, load_features
from agnet.settings import training_document, variant_descriptors
from agnet.train import loop
from agnet.train.data import (
    PairSampler,
    PKSampler,
    TrainSet,
    erase_decision,
    erase_mask,
    make_loader,
    make_sampler,
    normalise_on_device,
)
from agnet.train.loop import train
from agnet.train.schedule import lr_factor, make_optimizer, make_scheduler
from agnet.train.settings import resolve_settings
from tests.conftest import REPO
from tests.train.test_loop import _relabelled, assert_same_weights, interrupt_and_resume, read_log, weights

BASE = yaml.safe_load((REPO / "config.yaml").read_text())
# what a tiny CPU test overrides in the bot variants (their own keys win over `training`)
TINY = {"backbone": "resnet18_narrow", "pretrained": "none", "input_size": [32, 32], "embedding_dim": 32,
        "epochs": 3, "lr_milestones": [2], "warmup_epochs": 2, "batch_size": 16, "workers": 0, "deterministic": True}
OPERATIONAL_TINY = {"workers": 0, "deterministic": True}


def tiny_config() -> dict:
    config = copy.deepcopy(BASE)
    config["training"].update({k: v for k, v in TINY.items()})
    for name in ("bot", "bot_attr", "bot_als"):
        config["variants"][name].update({k: v for k, v in TINY.items() if k not in OPERATIONAL_TINY})
    return config


# ----------------------------------------------------------------------------------------------- schedule


def _lrs(settings, epochs: int) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(settings, model.parameters(), fused=False)
    scheduler = make_scheduler(optimizer, settings)
    values = []
    for _ in range(epochs):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_warmup_schedule_values_per_epoch_and_off_is_todays_schedule():
    config = copy.deepcopy(BASE)
    config["variants"]["w"] = {"lr": 0.1, "lr_milestones": [3, 5], "warmup_epochs": 0}
    off = resolve_settings(config, "w")
    lrs = _lrs(off, 7)
    reference = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    multistep = torch.optim.lr_scheduler.MultiStepLR(reference, [3, 5], 0.1)
    expected = []
    for _ in range(7):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        multistep.step()
    assert lrs == expected  # off: MultiStepLR itself, value for value
    config["variants"]["w"].update(warmup_epochs=4, lr_milestones=[6])
    on = resolve_settings(config, "w")
    assert _lrs(on, 8) == pytest.approx([0.01, 0.0325, 0.055, 0.0775, 0.1, 0.1, 0.01, 0.01])
    bot = resolve_settings(BASE, "bot")  # BoT: 3.5e-5 → 3.5e-4 over 10 epochs, / 10 at 40 and 70
    assert [bot.lr * lr_factor(bot, e) for e in (0, 9, 10, 39, 40, 70)] == \
        pytest.approx([3.5e-5, 3.5e-5 + 0.9 * 3.15e-4, 3.5e-4, 3.5e-4, 3.5e-5, 3.5e-6])


def test_optimizer_is_adam_only_when_configured_and_skips_the_frozen_bnneck_bias():
    from agnet.model import build_model

    bot = resolve_settings(tiny_config(), "bot")
    model = build_model(bot, 5, 2, 2)
    optimizer = make_optimizer(bot, model.parameters(), fused=False)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["weight_decay"] == 0.0005
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.bnneck.bias) not in held and id(model.bnneck.weight) in held
    agnet = resolve_settings(tiny_config(), "agnet_asl")
    assert isinstance(make_optimizer(agnet, model.parameters(), fused=False), torch.optim.SGD)


# ----------------------------------------------------------------------------------------------- erasing


def test_random_erasing_is_seeded_per_image_and_off_at_zero():
    decisions = [erase_decision(3, 1, 2, slot, 0.5, 40, 40) for slot in range(400)]
    assert decisions == [erase_decision(3, 1, 2, slot, 0.5, 40, 40) for slot in range(400)]
    erased = [d for d in decisions if d[2]]
    assert 0.4 < len(erased) / 400 < 0.6
    for top, left, h, w in erased:
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 40
        assert 0.02 * 1600 * 0.8 <= h * w <= 0.4 * 1600 * 1.2 and 0.3 * 0.7 <= h / w <= 3.34 / 0.7
    assert decisions != [erase_decision(4, 1, 2, slot, 0.5, 40, 40) for slot in range(400)]
    assert all(erase_decision(3, 1, 2, slot, 0.0, 40, 40) == (0, 0, 0, 0) for slot in range(50))


def test_erased_rectangle_is_the_imagenet_mean_after_normalisation():
    images = torch.randint(0, 256, (2, 10, 12, 3), dtype=torch.uint8)
    flipped = torch.tensor([False, True])
    erase = torch.tensor([[2, 3, 4, 5], [0, 0, 0, 0]])
    plain = normalise_on_device(images, flipped)
    out = normalise_on_device(images, flipped, erase=erase)
    mask = erase_mask(erase, 10, 12).expand_as(out)
    assert mask.sum() == 3 * 4 * 5 and torch.all(out[mask] == 0)
    assert torch.equal(out[~mask], plain[~mask]) and torch.equal(out[1], plain[1])


def test_loader_carries_erasing_only_when_on(manifest):
    from agnet.data.manifest import read_manifest

    frame, meta = read_manifest(manifest)
    train_set = TrainSet.from_manifest(frame, meta["root"])
    for variant, erasing in (("agnet_asl", False), ("bot", True)):
        settings = resolve_settings(tiny_config(), variant)
        sampler = make_sampler(train_set, settings, seed=0)
        batch = next(iter(make_loader(train_set, sampler, settings, epoch=0, workers=0)))
        assert ("erase" in batch) is erasing
        if erasing:
            assert batch["erase"].shape == (16, 4) and (batch["erase"][:, 2] > 0).any()


# ----------------------------------------------------------------------------------------------- P x K


def _train_set(classes=10, per_class=(1, 2, 3, 5, 8), attributes=True) -> TrainSet:
    rng = np.random.default_rng(0)
    counts = [per_class[c % len(per_class)] for c in range(classes)]
    class_ids = np.repeat(np.arange(classes), counts)
    color = rng.integers(0, 2, classes)[class_ids]
    vtype = rng.integers(0, 2, classes)[class_ids]
    if not attributes:
        return TrainSet([f"{i}.jpg" for i in range(len(class_ids))], class_ids)
    return TrainSet([f"{i}.jpg" for i in range(len(class_ids))], class_ids, color, vtype)


def test_pk_batches_hold_p_identities_of_k_images_with_in_batch_pairs():
    train_set = _train_set()
    sampler = PKSampler(train_set, batch_size=12, instances_per_identity=3, hard_negative_fraction=1.0, seed=4)
    plan = sampler.plan(2)
    assert len(plan) == sampler.steps_per_epoch == len(train_set) // 12
    for batch in plan:
        ids = train_set.class_ids[batch.indices].reshape(4, 3)
        assert (ids == ids[:, :1]).all() and len(set(ids[:, 0])) == 4  # P distinct identities, K images each
        positive, negative = batch.partners[:, 0], batch.partners[:, 1]
        slots = np.arange(12)
        assert (positive != slots).all() and (positive // 3 == slots // 3).all()
        assert (negative // 3 != slots // 3).all()
        color, vtype = train_set.color_ids[batch.indices], train_set.type_ids[batch.indices]
        alike = (color[:, None] == color[None, :]) & (vtype[:, None] == vtype[None, :]) & \
            (slots[:, None] // 3 != slots[None, :] // 3)
        hard = (color == color[negative]) & (vtype == vtype[negative])
        assert (hard == alike.any(1)).all()  # fraction 1: a hard negative wherever the batch holds one
        assert (batch.negative_hard == hard).all()
        assert batch.same.tolist() == [True] * 12 + [False] * 12 and (batch.hard[12:] == hard).all()
    again = PKSampler(train_set, 12, 3, 1.0, seed=4).plan(2)
    assert all(np.array_equal(a.indices, b.indices) and np.array_equal(a.partners, b.partners)
               for a, b in zip(plan, again, strict=True))
    assert not np.array_equal(plan[0].indices, sampler.plan(3)[0].indices)


def test_pk_pairs_reach_the_batch_and_the_pair_sampler_is_unchanged(manifest):
    from agnet.data.manifest import read_manifest

    frame, meta = read_manifest(manifest)
    train_set = TrainSet.from_manifest(frame, meta["root"])
    pk = resolve_settings(tiny_config(), "bot_als")
    sampler = make_sampler(train_set, pk, seed=1)
    assert isinstance(sampler, PKSampler)
    batch = next(iter(make_loader(train_set, sampler, pk, epoch=0, workers=0)))
    left, right = batch["pair_left"], batch["pair_right"]
    assert left.shape == right.shape == batch["same"].shape == batch["hard"].shape == (32,)
    ids = batch["class_id"]
    assert torch.equal(ids[left] == ids[right], batch["same"])
    plain = resolve_settings(tiny_config(), "agnet_asl")
    assert type(make_sampler(train_set, plain, seed=1)) is PairSampler
    batch = next(iter(make_loader(train_set, make_sampler(train_set, plain, seed=1), plain, epoch=0, workers=0)))
    assert "pair_left" not in batch and batch["same"].shape == (8,)


@pytest.mark.parametrize("override, message", [
    ({"batch_size": 18}, r"variants\.bot\.batch_size: 18 is not P x K with K = instances_per_identity = 4"),
    ({"instances_per_identity": 1}, r"variants\.bot\.instances_per_identity: 1; the pk sampler needs K >= 2"),
    ({"loss_weights": {"attributes": 0.5}}, r"variants\.bot\.loss_weights: architecture bot has no attribute branch"),
    ({"warmup_epochs": 200}, r"variants\.bot\.warmup_epochs: 200 epochs of warm-up do not end before the first lr step"),
])
def test_bad_bot_settings_name_the_field(override, message):
    config = tiny_config()
    config["variants"]["bot"].update(override)
    if "loss_weights" in override:
        config["variants"]["bot"]["loss_weights"] = {"category": 1.0, "attributes": 0.5, "verify": 0.0}
    with pytest.raises(ConfigError, match=message):
        resolve_settings(config, "bot")


def test_pk_sampler_needs_p_identities():
    with pytest.raises(AgnetError, match="need P = 8 training identities"):
        PKSampler(_train_set(classes=5), batch_size=32, instances_per_identity=4, hard_negative_fraction=0.0, seed=0)


# ----------------------------------------------------------------------------------------------- documents


def test_documents_hold_the_tricks_only_where_on_and_descriptors_per_variant():
    config = copy.deepcopy(BASE)
    tricks = ("architecture", "last_stride", "bnneck", "id_label_smoothing", "triplet", "warmup_epochs",
              "warmup_factor", "random_erasing", "sampler", "instances_per_identity", "optimizer")
    for variant in ("only_id", "agnet_ce", "agnet_asl", "agnet_ce_uniform", "agnet_asl_shuffled"):
        assert not set(tricks) & set(training_document(config, variant)["settings"])
        assert variant_descriptors(config, variant) == ["Attr", "ID", "All"]
    bot = training_document(config, "bot")["settings"]
    assert bot["architecture"] == "bot" and bot["triplet"] == {"weight": 1.0, "margin": 0.3}
    assert bot["embedding_dim"] is None and bot["momentum"] is None and bot["positive_fraction"] is None
    assert bot["hard_negative_fraction"] == 0.0 and bot["verification_loss"] is None
    assert variant_descriptors(config, "bot") == ["ID"]
    assert variant_descriptors(config, "bot_attr") == ["Attr", "ID", "All"]
    attr, als = training_document(config, "bot_attr")["settings"], training_document(config, "bot_als")["settings"]
    differing = {k for k in set(attr) | set(als) if attr.get(k) != als.get(k)}
    assert differing == {"loss_weights", "verification_loss", "als", "hard_negative_fraction"}  # the ALS term only
    assert resolve_settings(config, "bot").uses_attributes is False


# ----------------------------------------------------------------------------------------------- training


def test_bot_trains_reads_no_attribute_label_and_extracts_id_alone(manifest, tmp_path, capsys):
    settings = resolve_settings(tiny_config(), "bot")
    record = train(settings, manifest, tmp_path / "original", seed=1, progress=False)
    assert record["attributes_used"] is False and record["optimizer"] == "Adam"
    rows = read_log(tmp_path / "original")
    assert [row["lr"] for row in rows] == pytest.approx([3.5e-5, 3.5e-4 * 0.55, 3.5e-5])
    assert all(row["loss_triplet"] > 0 and row["loss_verify"] == 0 and row["loss_color"] == 0 for row in rows)
    relabelled = _relabelled(manifest, tmp_path / "permuted.parquet", "permuted")
    train(settings, relabelled, tmp_path / "permuted", seed=1, progress=False)
    assert_same_weights(tmp_path / "original", tmp_path / "permuted")

    features = tmp_path / "features.pt"
    extract(tmp_path / "original" / "model.pt", manifest, features, batch_size=8, workers=0, progress=False)
    stored = torch.load(features, weights_only=True)
    assert "ID" in stored and "Attr" not in stored
    loaded = load_features(features, descriptors=["ID"])
    assert loaded["ID"].shape[1] == 128 and "Attr" not in loaded
    for asked in ({"alpha": 0.5}, {"descriptors": ["Attr"]}, {"descriptors": ["ID", "All"]}):
        with pytest.raises(AgnetError, match=rf"{features}: the .* descriptor\(s\) cannot be scored: the file holds ID "
                                             r"only \(variant 'bot' has no attribute branch"):
            load_features(features, **asked)

    # `agnet evaluate` from a config scores what the model provides (ID; no All, so no α sweep) and refuses, naming
    # the features file, a descriptor it was asked for and cannot give
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config()))
    common = ["evaluate", "--config", str(config_file), "--features", str(features), "--manifest", str(manifest)]
    assert main([*common, "-o", str(tmp_path / "metrics.json")]) == 0
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert {r["descriptor"] for r in data["records"] if r["descriptor"] != "none"} == {"ID"}
    assert "alpha_sweep" not in data and "alpha" not in data["evaluation"]
    assert main([*common, "--descriptor", "All", "-o", str(tmp_path / "all.json")]) == 1
    assert f"{features}: the All descriptor(s) cannot be scored" in capsys.readouterr().err
    assert not (tmp_path / "all.json").exists()


def test_bot_extraction_descriptor_is_the_bnneck_output_in_eval_mode(manifest, tmp_path):
    from agnet.data.manifest import read_manifest
    from agnet.extract import load_trained
    from agnet.images import load_tensor
    from agnet.protocols import evaluated_images

    settings = resolve_settings(tiny_config(), "bot")
    train(settings, manifest, tmp_path / "run", seed=0, progress=False)
    extract(tmp_path / "run" / "model.pt", manifest, tmp_path / "f.pt", batch_size=8, workers=0, progress=False)
    loaded = load_features(tmp_path / "f.pt")
    model, _, _ = load_trained(tmp_path / "run" / "model.pt")
    frame, meta = read_manifest(manifest)
    paths = evaluated_images(frame, None)[:4]
    images = torch.stack([load_tensor(str(Path(meta["root"]) / p), tuple(settings.input_size)) for p in paths])
    with torch.no_grad():
        f_t = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(model.layer4(model.stem(images)), 1), 1)
        expected = model.bnneck(f_t)  # eval mode: running statistics
    torch.testing.assert_close(loaded["ID"][:4], expected, rtol=2e-3, atol=2e-3)  # stored as float16 unit vectors
    assert not torch.allclose(loaded["ID"][:4], f_t, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("variant", ["bot", "bot_als"])
def test_bot_variants_resume_mid_epoch_to_identical_weights(variant, manifest, tmp_path, monkeypatch):
    """Warm-up, P x K plan, in-batch pairs and random erasing all replay after a SIGUSR1 mid-epoch (epoch 2, in the
    warm-up) and a resume."""
    settings = resolve_settings(tiny_config(), variant)
    train(settings, manifest, tmp_path / "reference", seed=6, progress=False)
    real_total, calls = loop.total_loss, []

    def interrupt(outputs, batch, verify_logits, *args, **kwargs):
        calls.append(1)
        if len(calls) == per_epoch + 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_total(outputs, batch, verify_logits, *args, **kwargs)

    from agnet.data.manifest import read_manifest

    frame, meta = read_manifest(manifest)
    per_epoch = make_sampler(TrainSet.from_manifest(frame, meta["root"]), settings, 6).steps_per_epoch
    interrupt_and_resume(settings, manifest, tmp_path, monkeypatch, interrupt, "checkpoint saved at epoch 2, step 2")
    if variant == "bot_als":
        assert all(r["loss_verify"] > 0 and r["loss_color"] > 0 for r in read_log(tmp_path / "reference"))
        assert "verify_head.weight" in weights(tmp_path / "reference")
