"""Tests for agnet.weights: torchvision's ImageNet URLs, verified fetching, strict loading.

Nothing leaves the machine: downloads come from a local HTTP server on 127.0.0.1 (random port)
serving small fake weight files whose names carry the right (or a wrong) SHA-256 prefix.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from agnet import weights
from agnet.errors import AgnetError, ConfigError, FetchError
from agnet.weights import (
    WeightsError,
    fetch_imagenet,
    fetch_main,
    hash_prefix_from_url,
    imagenet_source,
    load_pretrained,
)

FAST = {"progress": False, "retries": 0, "timeout": 5.0, "backoff": 0.01}


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _serve(server, stem: str, data: bytes, prefix: str | None = None) -> str:
    """Serve ``data`` as ``/models/<stem>-<prefix>.pth`` (prefix: its real sha256's unless given); return the URL."""
    base, behaviour = server
    prefix = prefix or hashlib.sha256(data).hexdigest()[:8]
    path = f"/models/{stem}-{prefix}.pth"
    behaviour.files[path] = data
    return base + path


# --------------------------------------------------------------------------------------------
# imagenet_source
# --------------------------------------------------------------------------------------------


def test_imagenet_source_is_torchvisions_v1_url_and_prefix():
    url, prefix = imagenet_source("resnet50")
    assert url == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    assert url.rsplit("/", 1)[1] == f"resnet50-{prefix}.pth"
    assert len(prefix) == 8 and int(prefix, 16) >= 0


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet101"])
def test_imagenet_source_other_backbones(backbone):
    url, prefix = imagenet_source(backbone)
    enum = getattr(torchvision.models, weights.IMAGENET_BACKBONES[backbone])
    assert url == enum.IMAGENET1K_V1.url
    assert url.endswith(f"/{backbone}-{prefix}.pth")


def test_narrow_backbone_has_no_imagenet_weights():
    with pytest.raises(ConfigError, match="resnet18_narrow") as info:
        imagenet_source("resnet18_narrow")
    assert "pretrained: none" in str(info.value)


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="resnet9000.*resnet50"):
        imagenet_source("resnet9000")


@pytest.mark.parametrize(
    ("url", "prefix"),
    [
        ("https://download.pytorch.org/models/resnet50-0676ba61.pth", "0676ba61"),
        ("http://mirror/x/resnet-18-ABCDEF0123.pth?token=1", "abcdef0123"),
    ],
)
def test_hash_prefix_from_url(url, prefix):
    assert hash_prefix_from_url(url) == prefix


@pytest.mark.parametrize("url", ["http://mirror/resnet50.pth", "http://mirror/resnet50-0676.pth", "http://mirror/"])
def test_hash_prefix_missing(url):
    with pytest.raises(FetchError):
        hash_prefix_from_url(url)


# --------------------------------------------------------------------------------------------
# fetch_imagenet
# --------------------------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_is_idempotent(server, tmp_path):
    data = _saved({"w": torch.arange(10.0)})
    url = _serve(server, "resnet18", data)
    cache = tmp_path / "cache"
    path = fetch_imagenet("resnet18", cache, url=url, **FAST)
    assert path == cache / url.rsplit("/", 1)[1]
    assert path.read_bytes() == data
    requests = server[1].requests
    assert len(requests) == 1

    assert fetch_imagenet("resnet18", cache, url=url, **FAST) == path
    assert len(requests) == 1  # the verified file was reused without a request
    assert sorted(p.name for p in cache.iterdir()) == [path.name]


def test_fetch_prefix_mismatch_deletes_file(server, tmp_path):
    data = _saved({"w": torch.ones(3)})
    actual = hashlib.sha256(data).hexdigest()
    wrong = "00000000" if not actual.startswith("00000000") else "ffffffff"
    url = _serve(server, "resnet18", data, prefix=wrong)
    cache = tmp_path / "cache"
    with pytest.raises(FetchError) as info:
        fetch_imagenet("resnet18", cache, url=url, **FAST)
    message = str(info.value)
    assert wrong in message and actual in message and f"resnet18-{wrong}.pth" in message
    assert not any(cache.iterdir())  # neither the file nor a .part is left


def test_fetch_replaces_a_corrupt_cached_file(server, tmp_path):
    data = _saved({"w": torch.ones(3)})
    url = _serve(server, "resnet18", data)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / url.rsplit("/", 1)[1]).write_bytes(b"not the weights")
    path = fetch_imagenet("resnet18", cache, url=url, **FAST)
    assert path.read_bytes() == data
    assert len(server[1].requests) == 1


def test_fetch_http_error_is_fetch_error(server, tmp_path):
    url = server[0] + "/models/resnet18-0123abcd.pth"  # not served: 404
    with pytest.raises(FetchError, match="404"):
        fetch_imagenet("resnet18", tmp_path, url=url, **FAST)


def test_fetch_narrow_backbone_refused_before_any_request(server, tmp_path):
    url = _serve(server, "resnet18", _saved({"w": torch.ones(1)}))
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        fetch_imagenet("resnet18_narrow", tmp_path, url=url, **FAST)
    with pytest.raises(ConfigError):
        fetch_main("resnet18_narrow", tmp_path)
    assert server[1].requests == []


# --------------------------------------------------------------------------------------------
# load_pretrained
# --------------------------------------------------------------------------------------------


def _trunk() -> nn.Module:
    trunk = torchvision.models.resnet18(weights=None)
    trunk.fc = nn.Identity()
    return trunk


@pytest.fixture(scope="module")
def reference_state() -> dict[str, torch.Tensor]:
    """A full resnet18 state dict, fc included (like torchvision's ImageNet files), non-default BN stats."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            value.uniform_(0.5, 1.5)
        elif key.endswith("num_batches_tracked"):
            value.fill_(7)
    return state


@pytest.fixture(scope="module")
def reference_file(reference_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18-full.pth"
    torch.save(reference_state, path)
    return path


def _assert_loaded(trunk: nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = trunk.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key


def test_load_full_state_dict_into_identity_fc_trunk(reference_state, reference_file, tmp_path):
    trunk = _trunk()
    assert not torch.equal(trunk.conv1.weight, reference_state["conv1.weight"])
    record = load_pretrained(trunk, str(reference_file), "resnet18", tmp_path)
    _assert_loaded(trunk, reference_state)
    expected_tensors = sum(1 for k in reference_state if not k.startswith("fc."))
    assert record == {
        "source": str(reference_file),
        "file": str(reference_file),
        "url": None,
        "sha256": hashlib.sha256(reference_file.read_bytes()).hexdigest(),
        "tensors": expected_tensors,
    }


def test_load_into_trunk_without_fc_and_with_own_fc(reference_state, reference_file, tmp_path):
    removed = torchvision.models.resnet18(weights=None)
    del removed.fc
    load_pretrained(removed, str(reference_file), "resnet18", tmp_path)
    _assert_loaded(removed, reference_state)

    own = torchvision.models.resnet18(weights=None)
    own.fc = nn.Linear(512, 5)
    before = own.fc.weight.detach().clone()
    load_pretrained(own, str(reference_file), "resnet18", tmp_path)
    _assert_loaded(own, reference_state)
    assert torch.equal(own.fc.weight, before)  # the classifier is not part of the trunk


def test_missing_key_is_named(reference_state, tmp_path):
    state = dict(reference_state)
    del state["layer2.0.conv1.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"missing key\(s\): layer2\.0\.conv1\.weight") as info:
        load_pretrained(_trunk(), str(path), "resnet18", tmp_path)
    assert str(path) in str(info.value)


def test_unexpected_key_is_named(reference_state, tmp_path):
    state = {**reference_state, "layer5.weight": torch.zeros(2)}
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"unexpected key\(s\): layer5\.weight"):
        load_pretrained(_trunk(), str(path), "resnet18", tmp_path)


def test_shape_mismatch_names_key_and_both_shapes(reference_state, tmp_path):
    state = {**reference_state, "bn1.weight": torch.ones(32)}
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    trunk = _trunk()
    before = trunk.conv1.weight.detach().clone()
    with pytest.raises(WeightsError) as info:
        load_pretrained(trunk, str(path), "resnet18", tmp_path)
    message = str(info.value)
    assert "bn1.weight" in message and "(32,)" in message and "(64,)" in message
    assert torch.equal(trunk.conv1.weight, before)  # nothing was loaded


def test_many_problems_are_capped(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({f"extra{i}": torch.zeros(1) for i in range(25)}, path)
    with pytest.raises(WeightsError, match=r"and 15 more") as info:
        load_pretrained(_trunk(), str(path), "resnet18", tmp_path)
    assert "extra24" not in str(info.value)


def test_other_backbone_file_does_not_fit(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="unexpected key"):
        load_pretrained(_trunk(), str(path), "resnet18", tmp_path)


@pytest.mark.parametrize("key", ["model", "state_dict"])
def test_checkpoint_dict_is_accepted(reference_state, tmp_path, key):
    path = tmp_path / "checkpoint.pth"
    torch.save({key: reference_state, "epoch": 3}, path)
    trunk = _trunk()
    record = load_pretrained(trunk, str(path), "resnet18", tmp_path)
    _assert_loaded(trunk, reference_state)
    assert record["tensors"] > 0


def test_missing_num_batches_tracked_is_tolerated(reference_state, tmp_path):
    """torchvision's V1 ImageNet files predate BatchNorm's num_batches_tracked buffer."""
    state = {k: v for k, v in reference_state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    trunk = _trunk()
    record = load_pretrained(trunk, str(path), "resnet18", tmp_path)
    _assert_loaded(trunk, state)
    assert record["tensors"] == sum(1 for k in state if not k.startswith("fc."))
    assert int(trunk.bn1.num_batches_tracked) == 0


def test_none_leaves_weights_untouched(tmp_path):
    trunk = _trunk()
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    record = load_pretrained(trunk, "none", "resnet18_narrow", tmp_path)
    assert record["source"] == "none" and record["file"] is None and record["tensors"] == 0
    assert all(torch.equal(before[k], v) for k, v in trunk.state_dict().items())
    assert not any(tmp_path.iterdir())


def test_missing_path(tmp_path):
    with pytest.raises(WeightsError, match="nowhere.pth"):
        load_pretrained(_trunk(), str(tmp_path / "nowhere.pth"), "resnet18", tmp_path)


def test_unreadable_and_non_state_dict_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(WeightsError, match="garbage.pth"):
        load_pretrained(_trunk(), str(garbage), "resnet18", tmp_path)

    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        load_pretrained(_trunk(), str(tensor), "resnet18", tmp_path)


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), path)  # a whole module: only loadable with weights_only=False
    with pytest.raises(WeightsError, match="module.pth"):
        load_pretrained(_trunk(), str(path), "resnet18", tmp_path)


def test_imagenet_source_is_fetched_when_missing_then_loaded(server, tmp_path, monkeypatch):
    """``pretrained: imagenet``: fetched into the cache on first use, then loaded strictly."""

    class TinyTrunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(4)
            self.fc = nn.Identity()

    torch.manual_seed(1)
    source = TinyTrunk()
    state = {**source.state_dict(), "fc.weight": torch.zeros(1000, 4), "fc.bias": torch.zeros(1000)}
    data = _saved(state)
    url = _serve(server, "resnet18", data)
    monkeypatch.setattr(weights, "imagenet_source", lambda backbone: (url, hash_prefix_from_url(url)))

    cache = tmp_path / "cache"
    trunk = TinyTrunk()
    record = load_pretrained(trunk, "imagenet", "resnet18", cache, progress=False)
    assert torch.equal(trunk.conv1.weight, source.conv1.weight)
    assert record["url"] == url
    assert record["file"] == str(cache / url.rsplit("/", 1)[1])
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["tensors"] == len(source.state_dict())

    load_pretrained(TinyTrunk(), "imagenet", "resnet18", cache, progress=False)
    assert len(server[1].requests) == 1  # the cached file is reused


def test_errors_are_agnet_errors():
    assert issubclass(WeightsError, AgnetError)
