"""The GPU-time projection (benchmarks/projection.py) and its use by bench_rehearsal.py and bench_train.py: images per
epoch of both samplers, forward-FLOP costs, totals, and every train_variant of config.yaml covered."""

from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark scripts import each other from their folder

import bench_rehearsal
import bench_train
import projection

from agnet.errors import AgnetError, ConfigError


@pytest.fixture(scope="module")
def config() -> dict:
    return projection.protocol_config()


@pytest.fixture(scope="module")
def paper(config) -> dict:
    return projection.project(config, projection.paper_train_images(config))


def test_images_per_epoch_pairs_sampler(config):
    """Pairs: every image an anchor with its partner, the incomplete last batch dropped: 2 x floor(N / (B/2)) x B/2."""
    base = replace(projection.reference_settings(config), sampler="pairs")
    for batch, n, expected in ((32, 37_778, 75_552), (32, 78_956, 157_888), (32, 16, 32), (32, 31, 32),
                               (32, 32, 64), (8, 13, 24)):
        assert projection.images_per_epoch(n, replace(base, batch_size=batch)) == expected == 2 * (n // (batch // 2)) * (
            batch // 2)


def test_images_per_epoch_pk_sampler(config):
    """P x K: floor(N / B) full batches of B images."""
    base = replace(projection.reference_settings(config), sampler="pk", instances_per_identity=4)
    for batch, n, expected in ((64, 37_778, 37_760), (64, 78_956, 78_912), (64, 64, 64), (64, 127, 64),
                               (16, 50, 48)):
        assert projection.images_per_epoch(n, replace(base, batch_size=batch)) == expected == (n // batch) * batch
    with pytest.raises(AgnetError, match="too small for one P x K batch"):
        projection.images_per_epoch(63, replace(base, batch_size=64))


def test_flop_ratios(config):
    """The reference is AGNet-ResNet-50 at 224 x 224 (ratio 1 to itself); the FLOP count matches the published
    ResNet-50 (4.09 G multiply-adds at 224 x 224 = 8.18 GFLOPs) plus AGNet's second layer4 and 1x1 convolutions; a
    BoT ResNet-50 at 256 x 256 with last stride 1 costs more per image."""
    reference = projection.reference_settings(config)
    assert (reference.architecture, reference.backbone, reference.input_size, reference.last_stride) == (
        "agnet", "resnet50", (224, 224), 2)
    agnet = projection.forward_flops(reference)
    assert projection.forward_flops(replace(reference, variant="again")) == agnet  # ratio 1 to itself
    plain = projection.forward_flops(replace(reference, architecture="bot", bnneck=False))
    assert 8.0e9 < plain < 8.4e9  # torchvision's ResNet-50: 4.09 GMACs
    # AGNet = the trunk + a second layer4 (at 7 x 7: ~1.6 GFLOPs) + two 2048 x 2048 1x1 convolutions + heads
    assert 1.15 < agnet / plain < 1.25
    bot = replace(reference, architecture="bot", input_size=(256, 256), last_stride=1, bnneck=True)
    ratio = projection.forward_flops(bot) / agnet
    # stem..layer3 scale with the pixels, (256/224)^2 = 1.31; layer4 at 16 x 16 instead of 8 x 8 (stride 1) costs
    # ~4x its stride-2 self: ~16.2 GFLOPs in all, 1.65 x AGNet's 9.85 (counted: 1.647)
    assert 1.55 < ratio < 1.75
    # at 224 x 224 with stride 2 BoT is just the trunk: cheaper than AGNet
    assert projection.forward_flops(replace(bot, input_size=(224, 224), last_stride=2)) / agnet < 1


def test_every_train_variant_projected(config, paper):
    variants = config["train_variants"]
    assert {"bot", "bot_attr", "bot_als"} <= set(config["variants"])  # the BoT family is defined
    assert list(paper["variant_hours"]) == list(variants)
    assert {(r["dataset"], r["variant"]) for r in paper["rows"]} == {(ds, v) for ds in config["run"] for v in variants}
    assert list(paper["flops"]["variants"]) == list(variants)
    block = projection.docs_block(paper, {"date": "d", "machine": "m", "torch": "t", "config": "config.yaml"})
    for variant in variants:
        assert f"\n| {variant} |" in block
    for row in paper["rows"]:
        settings = projection.resolve_settings(config, row["variant"])
        assert (row["epochs"], row["seeds"]) == (settings.epochs, len(config["seeds"]))


def test_totals_are_sums_of_rows(config, paper):
    rates = paper["rates"]
    assert rates == list(projection.GPU_TRAIN_IMAGES_PER_S)
    for i, rate in enumerate(rates):
        assert paper["total_hours"][i] == pytest.approx(sum(r["hours"][i] for r in paper["rows"]))
        assert paper["total_hours"][i] == pytest.approx(sum(h[i] for h in paper["variant_hours"].values()))
        for r in paper["rows"]:
            assert r["hours"][i] == pytest.approx(r["seeds"] * r["epochs"] * r["images_per_epoch"] * r["cost"]
                                                  / rate / 3600)
    assert paper["images"] == sum(r["images"] for r in paper["rows"])
    # the AGNet rows are the paper's protocol as docs/paper-mapping.md counts it: 157.6 M images
    agnet = [r for r in paper["rows"] if r["variant"] in ("only_id", "agnet_ce", "agnet_asl")]
    assert all(r["cost"] == pytest.approx(1.0) for r in agnet)
    if len(agnet) == 6:
        assert sum(r["images"] for r in agnet) == 157_572_000


def test_projection_follows_train_variants(config):
    """The list is read from the config, not hard-coded: a config training only bot projects only bot."""
    only_bot = {**copy.deepcopy(config), "train_variants": ["bot"]}
    result = projection.project(only_bot, {"veri": 37_778})
    assert [r["variant"] for r in result["rows"]] == ["bot"]
    assert result["rows"][0]["images_per_epoch"] == 37_760  # P x K, batch 64
    with pytest.raises(ConfigError, match="train_variants: empty"):
        projection.project({**config, "train_variants": []}, {"veri": 37_778})
    with pytest.raises(ConfigError, match="no paper training-image count for veri-synth"):
        projection.paper_train_images({**config, "run": ["veri", "veri-synth"]})


def test_replace_block_leaves_the_rest(tmp_path):
    path = tmp_path / "bench.md"
    path.write_text("a\n<!-- x:start -->\nold\n<!-- x:end -->\nb edited by someone else\n")
    projection.replace_block(path, "<!-- x:start -->", "<!-- x:end -->", "<!-- x:start -->\nnew\n<!-- x:end -->")
    assert path.read_text() == "a\n<!-- x:start -->\nnew\n<!-- x:end -->\nb edited by someone else\n"
    projection.replace_block(path, "<!-- y:start -->", "<!-- y:end -->", "<!-- y:start -->\nY\n<!-- y:end -->")
    assert path.read_text().endswith("b edited by someone else\n\n<!-- y:start -->\nY\n<!-- y:end -->\n")


def test_rehearsal_projection_uses_every_variant(config, tmp_path, monkeypatch):
    records = [{"rule": "extract", "dataset": "veri-release", "images": 16_786, "seconds": 600.0},
               {"rule": "evaluate", "dataset": "veri-release", "seconds": 36.0}]
    p = bench_rehearsal.project({"veri-release": 37_778, "vehicleid-release": 44_552}, records, config)
    assert p["train_images"]["vehicleid-release"] == 78_956  # the paper's count, not the twin's
    training = p["training"]
    assert {r["variant"] for r in training["rows"]} == set(config["train_variants"])
    runs = len(config["train_variants"]) * len(config["seeds"])
    assert p["evaluate_hours_cpu"]["veri-release"] == pytest.approx(runs * 36.0 / 3600)
    weighted = sum(v["cost"] for v in training["flops"]["variants"].values()) * len(config["seeds"])
    assert p["extract_hours"]["veri-release"] == pytest.approx(weighted * 16_786 / 3000 / 3600)
    assert p["total_hours"] == pytest.approx([h + p["extract_hours"]["veri-release"] for h in training["total_hours"]])
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"before\n{bench_rehearsal.START}\nold\n{bench_rehearsal.END}\nafter\n")
    monkeypatch.setattr(bench_rehearsal, "DOCS", docs)
    meta = {"date": "d", "cpu": "c", "cores": 2, "memory_gb": 1.0, "python": "3", "torch": "t", "configs": ["x"]}
    bench_rehearsal.write_docs({"meta": meta, "records": [], "missed": [], "projection": p}, "")
    text = docs.read_text()
    assert text.startswith("before\n") and text.endswith(f"{bench_rehearsal.END}\nafter\n") and "old" not in text
    for variant in config["train_variants"]:
        assert f"| training {variant} veri-release (37,778 images" in text


def test_bench_train_protocol_images(config, paper):
    protocol = bench_train.protocol_images()
    assert protocol["images"] == paper["images"]
    assert protocol["reference_images"] == pytest.approx(sum(protocol["reference_images_per_variant"].values()))
    assert list(protocol["reference_images_per_variant"]) == list(config["train_variants"])
