"""Feature extraction: descriptors of every evaluation image (Eq. 5), provenance, strict model loading."""

from __future__ import annotations

import pytest
import torch
import yaml

from agnet.config import load_config
from agnet.data.manifest import make_manifest, read_manifest
from agnet.data.synth.veri import synth_veri
from agnet.errors import AgnetError
from agnet.extract import extract, load_features, load_trained
from agnet.train.loop import train
from agnet.train.settings import resolve_settings
from tests.conftest import REPO


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("extract")
    root = synth_veri(base / "VeRi", vehicles=10, cameras=3, seed=2, workers=1)
    make_manifest("veri", root, base / "m.parquet")
    tiny = base / "tiny.yaml"
    tiny.write_text(yaml.safe_dump({"training": {"backbone": "resnet18_narrow", "pretrained": "none",
                                                 "input_size": [32, 32], "embedding_dim": 16, "epochs": 1,
                                                 "batch_size": 8, "workers": 0}}))
    settings = resolve_settings(load_config(REPO / "config.yaml", tiny), "agnet_asl")
    train(settings, base / "m.parquet", base / "run", seed=0, progress=False)
    return base


def test_descriptors_of_every_evaluation_image(trained):
    out = trained / "features.pt"
    provenance = extract(trained / "run" / "model.pt", trained / "m.parquet", out, alpha=0.25, workers=0,
                         progress=False)
    features = load_features(out)
    frame, _ = read_manifest(trained / "m.parquet")
    expected = list(dict.fromkeys(frame.loc[frame["split"] != "train", "path"]))
    assert features["paths"] == expected  # each image once, query copies included
    n = len(expected)
    assert features["Attr"].shape == features["ID"].shape == (n, 16) and features["All"].shape == (n, 32)
    raw = torch.load(out, weights_only=True)
    assert raw["All"].dtype == torch.float16 and raw["All_norm"].dtype == torch.float32  # compact on disk
    assert features["All"].dtype == torch.float32
    torch.testing.assert_close(features["All"][:, 16:], 0.75 * features["ID"], atol=2e-3, rtol=2e-3)
    assert provenance["variant"] == "agnet_asl" and provenance["alpha"] == 0.25 and len(provenance["model_sha256"]) == 64


def test_held_out_vehicles_are_extracted_training_images_are_not(trained, tmp_path):
    make_manifest("veri", read_manifest(trained / "m.parquet")[1]["root"], tmp_path / "val.parquet",
                  holdout_vehicles=2)
    out = tmp_path / "with-val.pt"
    extract(trained / "run" / "model.pt", tmp_path / "val.parquet", out, alpha=0.5, workers=0, progress=False)
    frame, _ = read_manifest(tmp_path / "val.parquet")
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
