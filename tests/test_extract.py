"""Feature extraction: descriptors of every evaluation image (Eq. 5), provenance, strict model loading."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from agnet.cli import main
from agnet.config import load_config
from agnet.data.manifest import make_manifest, read_manifest
from agnet.data.synth.veri import synth_veri
from agnet.errors import AgnetError
from agnet.extract import extract, load_features, load_trained
from agnet.protocols import evaluated_images
from agnet.train.loop import train
from agnet.train.settings import resolve_settings
from tests.conftest import REPO


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_trained(tmp_path_factory)


def make_trained(tmp_path_factory):
    """A one-epoch run on a 10-vehicle VeRi twin: VeRi/, m.parquet (2 held-out ``val`` vehicles: the manifest
    option, extracted but not evaluated), run/model.pt. Trained once per test session and shared (tests only read it)."""
    base = tmp_path_factory.getbasetemp() / "trained-veri-twin"
    if (base / "run" / "model.pt").is_file():
        return base
    base.mkdir(exist_ok=True)
    root = synth_veri(base / "VeRi", vehicles=10, cameras=3, seed=2, workers=1)
    make_manifest("veri", root, base / "m.parquet", holdout_vehicles=2)
    tiny = base / "tiny.yaml"
    tiny.write_text(yaml.safe_dump({"training": {"backbone": "resnet18_narrow", "pretrained": "none",
                                                 "input_size": [32, 32], "embedding_dim": 16, "epochs": 1,
                                                 "batch_size": 8, "workers": 0}}))
    settings = resolve_settings(load_config(REPO / "config.yaml", tiny), "agnet_asl")
    train(settings, base / "m.parquet", base / "run", seed=0, progress=False)
    return base


def test_descriptors_of_every_evaluation_image(trained):
    out = trained / "features.pt"
    provenance = extract(trained / "run" / "model.pt", trained / "m.parquet", out, workers=0, progress=False)
    features = load_features(out, alpha=0.25)
    frame, _ = read_manifest(trained / "m.parquet")
    expected = list(dict.fromkeys(frame.loc[frame["split"] != "train", "path"]))
    assert features["paths"] == expected  # each image once, query copies included
    n = len(expected)
    assert features["Attr"].shape == features["ID"].shape == (n, 16) and features["All"].shape == (n, 32)
    raw = torch.load(out, weights_only=True)
    assert raw["ID"].dtype == torch.float16 and raw["ID_norm"].dtype == torch.float32  # compact on disk
    assert "All" not in raw  # Eq. 5's All is built at evaluation, with the evaluation's alpha
    assert features["All"].dtype == torch.float32
    # Rows are scaled back on demand, exactly as the whole matrix would be (no 7 GB float32 copy at VehicleID size).
    rows = torch.tensor([n - 1, 0, 2])
    assert torch.equal(features["ID"][rows], (raw["ID"].float() * raw["ID_norm"])[rows])
    assert torch.equal(features["All"][rows], torch.cat([features["Attr"][rows], 0.75 * features["ID"][rows]], 1))
    assert torch.equal(features["All"].float()[rows], features["All"][rows])
    assert torch.equal(load_features(out, alpha=1.0)["All"][rows][:, 16:], torch.zeros(3, 16))
    assert "All" not in load_features(out)  # no alpha, no All
    with pytest.raises(AgnetError, match="alpha must be in"):
        load_features(out, alpha=1.5)
    assert provenance["variant"] == "agnet_asl" and "alpha" not in provenance and len(provenance["model_sha256"]) == 64
    assert len(provenance["manifest_sha256"]) == 64 and provenance["dataset"] == "veri"  # default label: the format
    assert provenance["precision"] == "torch.float32" and provenance["channels_last"] is False  # on a CPU


def test_batches_fill_the_stored_rows_in_manifest_order(trained, tmp_path):
    """Descriptors are written batch by batch into the stored matrices: small batches (a short last one included)
    give the rows one batch of everything gives."""
    whole, small = tmp_path / "whole.pt", tmp_path / "small.pt"
    extract(trained / "run" / "model.pt", trained / "m.parquet", whole, workers=0, progress=False)
    extract(trained / "run" / "model.pt", trained / "m.parquet", small, batch_size=3, workers=0, progress=False)
    a, b = load_features(whole, alpha=0.5), load_features(small, alpha=0.5)
    assert a["paths"] == b["paths"] and len(a["paths"]) % 3 != 0
    for name in ("Attr", "ID", "All"):
        torch.testing.assert_close(a[name].float(), b[name].float(), atol=2e-3, rtol=2e-3)


def test_a_diverged_model_is_refused_at_its_first_batch_and_nothing_is_written(trained, tmp_path, monkeypatch):
    """Non-finite descriptors stop extraction with one clear error at the first batch that shows them, not after
    every image was read; no features file is left behind."""
    state = torch.load(trained / "run" / "model.pt", weights_only=True)
    state["model"]["attr_embedding.linear.weight"][0, 0] = float("inf")
    torch.save(state, tmp_path / "diverged.pt")
    import agnet.extract as module

    batches = []
    real = module.branch_descriptors
    monkeypatch.setattr(module, "branch_descriptors", lambda *a: batches.append(1) or real(*a))
    out = tmp_path / "features.pt"
    with pytest.raises(AgnetError, match=r"diverged.pt: the Attr descriptor has non-finite values"):
        extract(tmp_path / "diverged.pt", trained / "m.parquet", out, batch_size=2, workers=0, progress=False)
    assert batches == [1] and not out.exists() and not list(tmp_path.glob(".features.pt.*"))


def test_held_out_vehicles_are_extracted_training_images_are_not(trained, tmp_path):
    out = tmp_path / "with-val.pt"
    extract(trained / "run" / "model.pt", trained / "m.parquet", out, workers=0, progress=False)
    frame, _ = read_manifest(trained / "m.parquet")
    assert (frame["split"] == "val").any()
    paths = set(load_features(out)["paths"])
    assert set(frame.loc[frame["split"] == "val", "path"]) <= paths
    assert not set(frame.loc[frame["split"] == "train", "path"]) & paths


def test_model_loading_is_strict(trained, tmp_path):
    state = torch.load(trained / "run" / "model.pt", weights_only=True)
    model, settings, _record = load_trained(trained / "run" / "model.pt")
    assert settings.embedding_dim == 16 and not model.training
    del state["model"]["id_head.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(AgnetError, match=r"(?s)broken.pt: weights do not fit the model.*id_head.weight"):
        load_trained(tmp_path / "broken.pt")
    (tmp_path / "junk.pt").write_bytes(b"nope")
    with pytest.raises(AgnetError, match="junk.pt: not a model written by `agnet train`"):
        load_trained(tmp_path / "junk.pt")


def _cli_config(base):
    tiny = base / "cli.yaml"
    if not tiny.exists():
        tiny.write_text(yaml.safe_dump({
            "training": {"backbone": "resnet18_narrow", "pretrained": "none", "input_size": [32, 32],
                         "embedding_dim": 16, "epochs": 1, "batch_size": 8, "workers": 0},
            "evaluation": {"workers": 0, "batch_size": 16, "vehicleid_trials": 2,
                           "str": {"enabled": True, "lambdas": [0.0, 0.3, 1.0]}}}))
    return ["--config", str(REPO / "config.yaml"), "--config", str(tiny)]


def test_one_evaluation_per_run_equals_the_per_protocol_results(trained, tmp_path, capsys):
    """`agnet evaluate` of a whole run gives exactly the numbers of one job per descriptor x protocol."""
    config = _cli_config(trained)
    features = trained / "cli-features.pt"
    assert main(["extract", *config, "--model", str(trained / "run" / "model.pt"), "--manifest",
                 str(trained / "m.parquet"), "--out", str(features), "--dataset", "twin",
                 "--no-progress"]) == 0
    assert "INFO agnet.extract: extracting" in capsys.readouterr().err  # the CLI configures logging (info)
    common = ["evaluate", *config, "--features", str(features), "--manifest", str(trained / "m.parquet"),
              "--model", str(trained / "run" / "model.pt")]
    assert main([*common, "-o", str(tmp_path / "all.json")]) == 0
    assert "INFO agnet: wrote 7 results to" in capsys.readouterr().err
    whole = json.loads((tmp_path / "all.json").read_text())
    assert [(r["descriptor"], r["protocol"]) for r in whole["records"]] == [
        (d, p) for d in ("Attr", "ID", "All") for p in ("veri", "veri-str")] + [("none", "veri-st")]  # control once
    assert whole["provenance"]["dataset"] == "twin" and whole["provenance"]["variant"] == "agnet_asl"
    for record in whole["records"]:
        out = tmp_path / f"{record['descriptor']}-{record['protocol']}.json"
        descriptor = "All" if record["descriptor"] == "none" else record["descriptor"]  # veri-st reads none
        assert main(["--log-level", "warning", *common, "--descriptor", descriptor, "--protocol",
                     record["protocol"], "-o", str(out)]) == 0
        assert capsys.readouterr().err == ""  # nothing below a warning
        (single,) = json.loads(out.read_text())["records"]
        assert single == record  # identical numbers, λ grid included


def test_extraction_follows_the_precision_settings(monkeypatch):
    from agnet import device as device_module

    assert device_module.precision("auto", "auto", torch.device("cpu")) == (None, False)  # CPU: always float32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert device_module.precision("on", "on", torch.device("cuda")) == (torch.bfloat16, True)
    assert device_module.precision("off", "off", torch.device("cuda")) == (None, False)


def test_vehicleid_protocols_limit_extraction_to_their_test_lists(tmp_path):
    """A VehicleID evaluation reads only its test lists: `--protocol vehicleid-<N>` extracts exactly those images
    (800-3,200: 26,350 of the release's 108,221 test images); no protocol, or VeRi's, keeps all."""
    make_manifest("vehicleid", REPO / "tests/fixtures/vehicleid", tmp_path / "v.parquet")
    frame, _ = read_manifest(tmp_path / "v.parquet")
    test = frame[frame["split"] == "test"]
    assert evaluated_images(frame) == list(test["path"])
    assert evaluated_images(frame, ["vehicleid-2"]) == list(test.loc[test["in_test_2"].astype(bool), "path"])
    assert len(evaluated_images(frame, ["vehicleid-2"])) < len(evaluated_images(frame, ["vehicleid-2", "vehicleid-4"]))
    assert evaluated_images(frame, ["vehicleid-2", "vehicleid-4"]) == list(test["path"])  # the lists are nested
    with pytest.raises(AgnetError, match=r"no test_list_800.txt in this dataset \(lists: \[2, 4\]\)"):
        evaluated_images(frame, ["vehicleid-800"])


def test_descriptor_rows_equal_the_scaled_matrix_for_every_index_form():
    """A loaded descriptor scales only the cells asked for, and any index gives what the same index of the whole
    float32 matrix gives (rows, masks, a column, a column range, tensors for both axes)."""
    from agnet.extract import Descriptor

    gen = torch.Generator().manual_seed(0)
    unit = torch.randn(5, 4, generator=gen).to(torch.float16)
    norm = torch.rand(5, 1, generator=gen) + 0.5
    d, full = Descriptor(unit, norm), unit.float() * norm
    idx, cols = torch.tensor([3, 0]), torch.tensor([1, 2])
    keys = [3, slice(None), [4, 1], idx, full[:, 0] > 0, (slice(None), 0), (Ellipsis, 0), (idx, 1), (idx, cols),
            (3, slice(1, 3)), (slice(None), slice(2, None))]
    for key in keys:
        assert torch.equal(d[key], full[key]), key
    assert d.shape == (5, 4) and len(d) == 5 and torch.equal(d.float(), full)


def test_evaluating_a_list_the_features_were_not_extracted_for_names_the_lists_they_cover():
    """Features extracted for some VehicleID lists only are refused for another list, and the error says which lists
    they hold and how to get the missing images (never a silent partial evaluation)."""
    import pandas as pd

    from agnet.evaluate import _features_for
    from agnet.extract import Descriptor

    unit = torch.ones(2, 4, dtype=torch.float16)
    features = {"paths": ["a.jpg", "b.jpg"], "ID": Descriptor(unit, torch.ones(2, 1)),
                "provenance": {"protocols": ["vehicleid-2"]}}
    assert _features_for(features, "ID", pd.Series(["b.jpg"])).shape == (1, 4)
    with pytest.raises(AgnetError, match=r"lack 1 image\(s\) of the protocol, e.g. c.jpg \(extracted for "
                                         r"vehicleid-2 only; rerun `agnet extract` with it\)"):
        _features_for(features, "ID", pd.Series(["a.jpg", "c.jpg"]))
    features["provenance"]["protocols"] = "all"
    with pytest.raises(AgnetError, match=r"e.g. c.jpg$"):
        _features_for(features, "ID", pd.Series(["c.jpg"]))
