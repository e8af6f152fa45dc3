"""Pretrained trunk weights: fetch torchvision's ImageNet files and load them strictly.

The training config's ``pretrained`` key is ``imagenet``, ``none`` or the path of a ``.pth`` file:

* :func:`imagenet_source` -- torchvision's published URL for a backbone and the hash prefix that
  torchvision puts in the file name (``resnet50-0676ba61.pth`` -> ``0676ba61``).
* :func:`fetch_imagenet` -- download that file into a cache directory (resumable, retried, see
  :func:`agnet.data.fetch.download`) and verify the published hash prefix.
* :func:`load_pretrained` -- load a file into a torchvision-style ResNet trunk (``conv1``, ``bn1``,
  ``layer1`` ... ``layer4``; the classifier ``fc`` is not part of the trunk). Loading is strict:
  a missing key, an unexpected key or a shape mismatch is an error, never a warning.
* :func:`fetch_main` -- what ``agnet weights fetch BACKBONE --cache DIR`` runs.

``torch`` and ``torchvision`` are imported inside the functions so that importing this module
(e.g. from the command-line program) stays cheap.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from agnet.data.fetch import download
from agnet.errors import AgnetError, ConfigError, FetchError
from agnet.fileio import sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "IMAGENET_BACKBONES",
    "WeightsError",
    "fetch_imagenet",
    "fetch_main",
    "hash_prefix_from_url",
    "imagenet_source",
    "load_pretrained",
]

log = logging.getLogger(__name__)

#: Backbone name -> name of torchvision's weight enum (in ``torchvision.models``).
IMAGENET_BACKBONES = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
}

#: Backbones this project knows that have no published ImageNet weights.
_NO_IMAGENET = {
    "resnet18_narrow": "it is a reduced-width ResNet-18 defined by this project, not a torchvision model",
}

# torchvision/torch.hub convention: "<name>-<first hex digits of the sha256>.<ext>"
_PREFIX_RE = re.compile(r"-([0-9a-fA-F]{8,64})\.[A-Za-z0-9]+$")

# keys of the classifier, which is not part of the trunk
_FC_RE = re.compile(r"^fc\.")

# BatchNorm bookkeeping buffer absent from files saved before torch 0.4.1 (torchvision's V1 files)
_NUM_BATCHES_TRACKED = "num_batches_tracked"

_MAX_LISTED = 10


class WeightsError(AgnetError):
    """A weights file cannot be read or does not fit the model (names the file and the keys)."""


# --------------------------------------------------------------------------------------------
# where the ImageNet weights live
# --------------------------------------------------------------------------------------------


def imagenet_source(backbone: str) -> tuple[str, str]:
    """Return ``(url, hash_prefix)`` of torchvision's ImageNet weights for ``backbone``.

    The URL is taken from torchvision's own weight enum, always ``IMAGENET1K_V1``
    (e.g. ``torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url``): the classic weights of the
    original torchvision ResNets (76.13 % top-1 for ResNet-50), which are what re-identification
    papers of the AGNet era started from -- not the later ``IMAGENET1K_V2`` recipe.
    torchvision publishes only the first hex digits of each file's SHA-256, in its file name;
    that prefix is parsed from the URL (see :func:`hash_prefix_from_url`).

    Raises :class:`ConfigError` for ``resnet18_narrow`` (no ImageNet weights exist) and for
    unknown backbones.
    """
    if backbone in _NO_IMAGENET:
        raise ConfigError(
            f"backbone {backbone!r} has no ImageNet weights: {_NO_IMAGENET[backbone]}; "
            "set training.pretrained: none (or the path of your own .pth file) for this backbone"
        )
    if backbone not in IMAGENET_BACKBONES:
        known = ", ".join([*IMAGENET_BACKBONES, *_NO_IMAGENET])
        raise ConfigError(f"unknown backbone {backbone!r}: expected one of {known}")
    import torchvision.models

    enum = getattr(torchvision.models, IMAGENET_BACKBONES[backbone])
    url = enum.IMAGENET1K_V1.url
    return url, hash_prefix_from_url(url)


def _file_name(url: str) -> str:
    """The last path component of ``url`` (percent-decoded); refuse names that are not a plain file."""
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise FetchError(f"cannot derive a file name from URL {url!r}")
    return name


def hash_prefix_from_url(url: str) -> str:
    """Return the lowercase SHA-256 prefix in ``url``'s file name (``resnet50-0676ba61.pth`` -> ``0676ba61``).

    The rule is torchvision's: the file name ends in ``-<hex>.<ext>``; at least 8 hex digits are
    required so that the check means something.
    """
    name = _file_name(url)
    match = _PREFIX_RE.search(name)
    if match is None:
        raise FetchError(
            f"cannot verify weights from {url}: the file name {name!r} does not carry a SHA-256 prefix "
            "(expected '<name>-<at least 8 hex digits>.<ext>', like torchvision's 'resnet50-0676ba61.pth')"
        )
    return match.group(1).lower()


# --------------------------------------------------------------------------------------------
# fetching
# --------------------------------------------------------------------------------------------


def fetch_imagenet(
    backbone: str,
    cache_dir: str | Path,
    *,
    url: str | None = None,
    progress: bool = True,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Download the ImageNet weights of ``backbone`` into ``cache_dir`` and return the file's path.

    The file is stored as ``cache_dir/<file name of the URL>``. ``url`` overrides torchvision's
    URL (mirrors, tests); the expected hash prefix is then parsed from the override's file name.
    The transfer is resumable and retried (:func:`agnet.data.fetch.download`). As only a prefix
    of the SHA-256 is published, the finished file's SHA-256 must start with it; otherwise the
    file is deleted and :class:`FetchError` names the file, the expected prefix and the actual
    hash. An existing file that verifies is returned without any request (one that does not is
    deleted and downloaded again).
    """
    return _fetch_verified(
        backbone, Path(cache_dir), url=url, progress=progress, retries=retries, timeout=timeout, backoff=backoff
    )[0]


def _fetch_verified(
    backbone: str,
    cache_dir: Path,
    *,
    url: str | None,
    progress: bool,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> tuple[Path, str, str]:
    """:func:`fetch_imagenet`, also returning the file's full SHA-256 and the URL."""
    if url is None:
        url, prefix = imagenet_source(backbone)
    else:
        imagenet_source(backbone)  # same backbone checks as without an override
        prefix = hash_prefix_from_url(url)
    dest = cache_dir / _file_name(url)

    if dest.is_file():
        digest = sha256_file(dest)
        if digest.startswith(prefix):
            return dest, digest, url
        log.warning(
            "%s exists but its sha256 %s does not start with the published prefix %s; downloading it again",
            dest,
            digest,
            prefix,
        )
        dest.unlink()

    download(url, dest, sha256=None, retries=retries, timeout=timeout, backoff=backoff, progress=progress)
    digest = sha256_file(dest)
    if not digest.startswith(prefix):
        dest.unlink(missing_ok=True)
        raise FetchError(
            f"checksum mismatch for {dest} (downloaded from {url}): expected a sha256 starting with "
            f"{prefix}, got {digest}; the file was deleted"
        )
    log.info("fetched %s (sha256 %s)", dest, digest)
    return dest, digest, url


def fetch_main(backbone: str, cache_dir: str | Path) -> Path:
    """Entry point of ``agnet weights fetch BACKBONE --cache DIR``: fetch (or find) and return the file."""
    return fetch_imagenet(backbone, Path(cache_dir), progress=True)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def load_pretrained(
    model: torch.nn.Module,
    source: str,
    backbone: str,
    cache_dir: str | Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Load pretrained weights into the ResNet trunk ``model`` (in place) and return their provenance.

    ``source`` is the config's ``pretrained`` value:

    * ``"none"`` -- nothing is loaded;
    * ``"imagenet"`` -- torchvision's file for ``backbone`` from ``cache_dir``, fetched with
      :func:`fetch_imagenet` if it is not there yet;
    * anything else -- the path of a ``.pth`` file holding a state dict, or a checkpoint dict
      holding one under ``"model"`` or ``"state_dict"``.

    The file is read with ``torch.load(map_location="cpu", weights_only=True)``. Keys ``fc.*``
    (the classifier, not part of the trunk) are ignored on both sides, so a trunk whose ``fc`` is
    an ``Identity``, was removed, or is a layer of its own all work. Every other key must match
    exactly: any missing or unexpected key or any shape mismatch raises :class:`WeightsError`
    listing the offending keys. Missing BatchNorm ``num_batches_tracked`` buffers are tolerated
    (torchvision's V1 files predate them); the model keeps its own values.

    Returns ``{"source", "file", "url", "sha256", "tensors"}``: the ``source`` as given, the
    file's path (str; None for ``none``), the download URL (``imagenet`` only), the file's
    SHA-256 and the number of tensors loaded.
    """
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"training.pretrained: expected 'imagenet', 'none' or a file path, got {source!r}")
    record: dict[str, Any] = {"source": source, "file": None, "url": None, "sha256": None, "tensors": 0}
    if source == "none":
        return record

    if source == "imagenet":
        path, digest, record["url"] = _fetch_verified(backbone, Path(cache_dir), url=None, progress=progress)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"training.pretrained: {path} is not a file (expected 'imagenet', 'none' or the path of a .pth file)"
            )
        digest = sha256_file(path)

    state = _read_state_dict(path)
    record.update(file=str(path), sha256=digest, tensors=_load_strict(model, state, path))
    log.info("loaded %d tensors from %s (sha256 %s)", record["tensors"], path, digest)
    return record


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict (or a checkpoint dict holding one under "model"/"state_dict") from ``path``."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (refused object), corrupt zip, EOF, ...
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise WeightsError(
            f"cannot read weights from {path}: {type(exc).__name__}: {reason} "
            "(expected a file written by torch.save holding a state dict of tensors)"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(
            f"{path} does not hold a state dict: expected a non-empty dict of tensors, or a checkpoint "
            f"dict with one under 'model' or 'state_dict'; got {type(obj).__name__}"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: entries that are not named tensors: {_listing(bad)}")
    return dict(obj)


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> int:
    """Check ``state`` against ``model``'s trunk keys and shapes, then copy it in; return the tensor count."""
    state = {k: v for k, v in state.items() if not _FC_RE.match(k)}
    expected = {k: v for k, v in model.state_dict().items() if not _FC_RE.match(k)}

    missing = [k for k in expected if k not in state and k.rsplit(".", 1)[-1] != _NUM_BATCHES_TRACKED]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        raise WeightsError(
            f"weights in {path} do not fit the {type(model).__name__} trunk (fc.* ignored): " + "; ".join(problems)
        )

    # bookkeeping buffers absent from the file keep the model's values
    full = {**{k: v for k, v in expected.items() if k not in state}, **state}
    result = model.load_state_dict(full, strict=False)
    leftover = [k for k in (*result.missing_keys, *result.unexpected_keys) if not _FC_RE.match(k)]
    if leftover:  # pragma: no cover - the checks above should have caught it
        raise WeightsError(f"weights in {path} did not load cleanly: {_listing(leftover)}")
    return len(state)


def _listing(items: list[str]) -> str:
    """Up to ``_MAX_LISTED`` items, comma-separated, with a count of the rest."""
    shown = ", ".join(items[:_MAX_LISTED])
    rest = len(items) - _MAX_LISTED
    return shown + (f", ... and {rest} more" if rest > 0 else "")
