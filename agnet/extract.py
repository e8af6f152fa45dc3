"""Feature extraction: the paper's test descriptors (Eq. 5) for every evaluation image of a run.

``features.pt`` (a ``torch.save`` dict, loadable with ``weights_only=True``) holds

* ``paths``: image paths (manifest keys), each image decoded once;
* ``Attr`` (N, D), ``ID`` (N, D): the two branch descriptors (a model without the attribute branch, BoT's
  ``architecture: bot``, writes ``ID`` alone: no Attr is made up, and no All can be built), stored as float16 unit vectors plus float32 norms
  (``<name>_norm``, (N, 1)) — compact, and safe from float16 overflow; :func:`load_features` gives each as a
  :class:`Descriptor` whose rows come back as float32, and, given the evaluation's α, the paper's fused
  descriptor ``All = [Attr, (1 − α)·ID]`` (Eq. 5) built from them row by row (:class:`FusedDescriptor`) — so α
  is an evaluation setting: changing it re-scores a run without extracting it again;
* ``provenance``: dataset label, variant, seed, sha256 of the model and of the manifest, input size,
  device, precision, versions, the images covered. :func:`check_features` compares these hashes with the files a later
  step is given, so features of a retrained model or of another dataset are refused, never used.

Device and precision follow the same rules as training (:mod:`agnet.device`): on a GPU autocast
(bf16 where supported) and channels_last unless the ``amp``/``channels_last`` settings say ``off``;
on a CPU float32. Images are decoded by :mod:`agnet.images` and resized to the training input size
without augmentation. A model trained on another dataset (a different format, class count or
attribute vocabulary than the manifest's training split) is refused before any image is read.
"""

from __future__ import annotations

import errno
import logging
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from agnet import __version__
from agnet.data.manifest import read_manifest
from agnet.device import choose_device, precision
from agnet.errors import AgnetError
from agnet.fileio import atomic_path, sha256_file
from agnet.images import load_tensor
from agnet.model import branch_descriptors, build_model
from agnet.protocols import check_for_format, evaluated_images, list_protocols
from agnet.train.settings import TrainSettings, from_dict

STORED = ("Attr", "ID")  # the descriptors a features file holds; All is fused from them at evaluation
REQUIRED = ("ID",)  # every model has the ID descriptor; Attr only a model with the attribute branch

log = logging.getLogger(__name__)


def load_trained(model_path: str | Path) -> tuple[torch.nn.Module, TrainSettings, dict[str, Any]]:
    """Rebuild a trained model (AGNet, or BoT) from ``model.pt`` (strict: every weight must match)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise AgnetError(f"{model_path}: model file not found (train the run first with `agnet train`)")
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unreadable or unpicklable: the same to the user
        raise AgnetError(f"{model_path}: not a model written by `agnet train` ({_first_line(error)})") from None
    if isinstance(state, dict) and "optimizer" in state and "record" not in state:
        raise AgnetError(f"{model_path}: this is a training checkpoint, not a finished model; finish the run with "
                         "`agnet train ... --resume` and pass its model.pt")
    if isinstance(state, dict) and "provenance" in state and "paths" in state:
        raise AgnetError(f"{model_path}: this is a features file, not a model; pass the run's model.pt")
    try:
        record = state["record"]
        settings = from_dict(record["settings"])
        weights = state["model"]
    except Exception as error:  # noqa: BLE001 - incomplete: the same to the user
        raise AgnetError(f"{model_path}: not a model written by `agnet train` (missing {error})") from None
    model = build_model(settings, record["num_classes"], len(record["color_names"]), len(record["type_names"]))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        details = " ".join(str(error).split())
        details = details if len(details) <= 300 else details[:300] + " ..."
        raise AgnetError(f"{model_path}: weights do not fit the model they describe ({details})") from None
    return model.eval(), settings, record


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def check_model_fits(record: dict[str, Any], frame, meta: dict, model_path: Path, manifest_path: Path) -> None:
    """Refuse a model trained on another dataset than the manifest's: format, identity classes of the
    training split, colour and type names must all agree (the manifest file itself may be rebuilt)."""
    problems = []
    if record.get("dataset_format") != meta.get("format"):
        problems.append(f"format {record.get('dataset_format')!r} vs {meta.get('format')!r}")
    train = frame.loc[frame["split"] == "train", "class_id"]
    classes = int(train.max()) + 1 if len(train) and train.notna().any() else 0
    if record.get("num_classes") != classes:
        problems.append(f"{record.get('num_classes')} identity classes vs {classes} in the training split")
    for key in ("color_names", "type_names"):
        if list(record.get(key) or []) != list(meta.get(key) or []):
            problems.append(f"different {key.replace('_', ' ')}")
    if problems:
        raise AgnetError(f"{model_path} was trained on another dataset than {manifest_path} ("
                         + "; ".join(problems) + "); pass the manifest the model was trained on")




class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], input_size: tuple[int, int]):
        self.paths, self.input_size = paths, input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_tensor(self.paths[index], self.input_size)


def save_features(out_path: str | Path, stored: dict[str, Any]) -> None:
    """Write ``stored`` atomically; a full disk or an unwritable folder is one clear error, no partial file."""
    out_path = Path(out_path)
    try:
        with atomic_path(out_path) as tmp:
            torch.save(stored, tmp)
    except (OSError, RuntimeError) as error:
        text = str(error)
        full = getattr(error, "errno", None) == errno.ENOSPC or "No space left" in text or "unexpected pos" in text
        reason = "no space left on the device" if full else _first_line(error)
        raise AgnetError(f"{out_path}: cannot write the features file ({reason}); nothing was written") from None


@torch.no_grad()
def extract(model_path: str | Path, manifest_path: str | Path, out_path: str | Path, *,
            batch_size: int = 128, workers: int = 2, device: str | None = None,
            dataset: str | None = None, amp: str | None = None, channels_last: str | None = None,
            protocols: Sequence[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Write ``features.pt`` for the evaluation images of ``manifest_path``; returns the provenance.

    ``dataset`` labels the features (default: the manifest's format); ``amp``/``channels_last`` default
    to the settings the model was trained with; ``protocols`` limits VehicleID to the images of those test
    lists (:func:`agnet.protocols.evaluated_images`; recorded in the provenance)."""
    model_path, manifest_path = Path(model_path), Path(manifest_path)
    device = choose_device(device)
    model, settings, record = load_trained(model_path)
    frame, meta = read_manifest(manifest_path)
    check_model_fits(record, frame, meta, model_path, manifest_path)
    check_for_format(protocols or (), meta["format"], str(manifest_path))
    relative = evaluated_images(frame, protocols)
    if not relative:
        raise AgnetError(f"{manifest_path}: no evaluation images")
    root = Path(meta["root"])
    amp_dtype, use_channels_last = precision(amp or settings.amp, channels_last or settings.channels_last, device)
    model = model.to(device)
    if use_channels_last:
        model = model.to(memory_format=torch.channels_last)
    log.info("extracting %d images with %s on %s (%s)", len(relative), model_path, device, amp_dtype or "float32")
    loader = torch.utils.data.DataLoader(_Images([str(root / p) for p in relative], settings.input_size),
                                         batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    # Stored as they come, batch by batch, in their on-disk form (float16 unit vectors, float32 norms): memory is
    # the file's size (32 kB per image: 3.5 GB for all 108,221 VehicleID test images), not the float32
    # descriptors' (twice that, then a copy).
    stored: dict[str, Any] = {"paths": relative}
    done = 0
    for images in tqdm(loader, desc="extract", disable=not progress, mininterval=5.0):
        images = images.to(device, non_blocking=True)
        if use_channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(images)
        rows = slice(done, done + images.shape[0])
        for name, value in branch_descriptors({k: v.float() for k, v in outputs.items()}).items():
            value = value.cpu()
            if not torch.isfinite(value).all():
                raise AgnetError(f"{model_path}: the {name} descriptor has non-finite values (a diverged model?)")
            if name not in stored:
                stored[name] = torch.empty(len(relative), value.shape[1], dtype=torch.float16)
                stored[f"{name}_norm"] = torch.empty(len(relative), 1, dtype=torch.float32)
            norms = value.norm(dim=1, keepdim=True)
            stored[name][rows] = (value / norms.clamp_min(1e-12)).to(torch.float16)
            stored[f"{name}_norm"][rows] = norms
        done = rows.stop
    provenance = {
        "dataset": dataset or meta["format"], "dataset_format": meta["format"],
        "variant": settings.variant, "seed": record["seed"], "model": str(model_path),
        "model_sha256": sha256_file(model_path), "manifest": str(manifest_path),
        "manifest_sha256": sha256_file(manifest_path), "train_manifest_sha256": record.get("manifest_sha256"),
        "input_size": list(settings.input_size), "device": str(device),
        "precision": str(amp_dtype or torch.float32), "channels_last": use_channels_last,
        "storage": "float16 unit vectors x float32 norms", "agnet": __version__, "torch": str(torch.__version__),
        "python": platform.python_version(), "protocols": list_protocols(protocols) or "all",
        # how the model was trained, for the tables and claims to flag or refuse: cut short, or resumed with a
        # changed schedule (e.g. a lower lr after a divergence)
        "truncated": bool(record.get("truncated", False)),
        "schedule_changes": sum(1 for resume in record.get("resumes") or [] if resume.get("changed")),
    }
    if done != len(relative):
        raise AgnetError(f"{manifest_path}: the loader gave {done} of {len(relative)} evaluation images")
    stored["provenance"] = provenance
    save_features(out_path, stored)
    return provenance


def stored_descriptors(path: str | Path) -> set[str]:
    """The branch descriptors (of ``STORED``) a features file holds, read without loading its matrices (mmap)."""
    if not Path(path).is_file():
        raise AgnetError(f"{path}: features file not found (run `agnet extract` first)")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any failure means the same to the user
        raise AgnetError(f"{path}: unreadable features file ({_first_line(error)}); rerun `agnet extract`") from None
    return {name for name in STORED if isinstance(stored, dict) and name in stored}


def load_features(path: str | Path, alpha: float | None = None,
                  descriptors: Sequence[str] | None = None) -> dict[str, Any]:
    """Read a ``features.pt`` written by :func:`extract`; each descriptor comes back as a :class:`Descriptor`
    ((N, dim); indexing it gives float32 rows, ``.float()`` the whole matrix). With ``alpha`` (Eq. 5, in [0, 1])
    the result also holds ``All``, a :class:`FusedDescriptor` of Attr and ID.

    The structure is checked: every descriptor has one row per path, paths are unique, the provenance is
    present. A file without Attr (a model without the attribute branch, e.g. ``architecture: bot``) loads when
    neither ``alpha`` (All) nor ``descriptors`` asks for Attr or All. Anything else is an :class:`AgnetError`
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AgnetError(f"{path}: features file not found (run `agnet extract` first)")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means the same to the user
        raise AgnetError(f"{path}: unreadable features file ({_first_line(error)}); rerun `agnet extract`") from None
    if not isinstance(stored, dict) or "paths" not in stored or "provenance" not in stored:
        hint = " (this looks like a model or checkpoint)" if isinstance(stored, dict) and "model" in stored else ""
        raise AgnetError(f"{path}: not a features file written by `agnet extract`{hint}")
    paths = stored["paths"]
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise AgnetError(f"{path}: malformed features file ('paths' must be a list of image paths)")
    if len(set(paths)) != len(paths):
        raise AgnetError(f"{path}: malformed features file ({len(paths) - len(set(paths))} duplicate path(s))")
    stored.pop("All", None), stored.pop("All_norm", None)  # an older file's fixed-alpha All: rebuilt below
    missing = _missing_descriptors(stored, path, alpha, descriptors)
    if missing:
        raise AgnetError(missing)
    for name in STORED:
        values = stored.get(name)
        if name not in REQUIRED and name not in stored and f"{name}_norm" not in stored:
            continue  # a model without that branch
        if not torch.is_tensor(values) or values.dim() != 2:
            raise AgnetError(f"{path}: malformed features file (descriptor {name} missing or not a matrix)")
        if values.shape[0] != len(paths):
            raise AgnetError(f"{path}: malformed features file ({name} has {values.shape[0]} rows for "
                             f"{len(paths)} paths)")
        norm = stored.pop(f"{name}_norm", None)
        if norm is not None and (not torch.is_tensor(norm) or tuple(norm.shape) != (len(paths), 1)):
            raise AgnetError(f"{path}: malformed features file ({name}_norm does not match {name})")
        stored[name] = Descriptor(values, norm)
    if alpha is not None:
        if not 0.0 <= alpha <= 1.0:
            raise AgnetError(f"the All descriptor's alpha must be in [0, 1], got {alpha}")
        stored["All"] = FusedDescriptor(stored["Attr"], stored["ID"], alpha)
    return stored


def _missing_descriptors(stored: dict[str, Any], path: Path, alpha: float | None,
                         descriptors: Sequence[str] | None) -> str | None:
    """The error for descriptors asked of a file that has not got them (All needs Attr and ID), else None."""
    asked = list(descriptors or []) + (["All"] if alpha is not None else [])
    held = [name for name in STORED if name in stored]
    needs = {"Attr": ["Attr"], "ID": ["ID"], "All": ["Attr", "ID"]}
    lacking = sorted({name for name in asked for part in needs.get(name, [name]) if part not in held})
    if not lacking or not all(name in held for name in REQUIRED):
        return None  # nothing missing, or a malformed file: the structural check below names it
    variant = (stored.get("provenance") or {}).get("variant")
    return (f"{path}: the {' and '.join(lacking)} descriptor(s) cannot be scored: the file holds "
            f"{', '.join(held)} only (variant {variant!r} has no attribute branch, so no Attr and no All = "
            "[Attr, (1 - alpha) ID]); evaluate its runs with descriptors [ID] (agnet.settings.variant_descriptors)")


class Descriptor:
    """One descriptor of a features file, kept as stored (float16 unit vectors, float32 norms) and scaled back to
    float32 only for the rows asked for: ``d[rows]`` / ``d[rows, cols]`` are float32 tensors equal to those rows
    of ``unit.float() * norm``, so a protocol on VehicleID's 3,200-vehicle list converts its 20 k rows, not all
    108 k test images (7 GB in float32). ``d.float()`` is the whole matrix. Shape: (N, D)."""

    dtype = torch.float32

    def __init__(self, unit: torch.Tensor, norm: torch.Tensor | None):
        self.unit, self.norm = unit, norm

    @property
    def shape(self) -> torch.Size:
        return self.unit.shape

    def __len__(self) -> int:
        return self.unit.shape[0]

    def dim(self) -> int:
        return 2

    def __getitem__(self, key) -> torch.Tensor:
        values = self.unit[key].float()
        if self.norm is None:
            return values
        return values * self.norm.expand(self.unit.shape)[key]  # the same key on the norms: shapes always agree

    def float(self) -> torch.Tensor:
        return self[:]


class FusedDescriptor:
    """Eq. 5's ``All = [Attr, (1 − α)·ID]`` of a features file, built for the rows asked for (float32; the same
    interface as :class:`Descriptor`). Shape: (N, D_attr + D_id)."""

    dtype = torch.float32

    def __init__(self, attr: Descriptor, identity: Descriptor, alpha: float):
        self.attr, self.identity, self.alpha = attr, identity, float(alpha)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.attr), self.attr.shape[1] + self.identity.shape[1]))

    def __len__(self) -> int:
        return len(self.attr)

    def dim(self) -> int:
        return 2

    def __getitem__(self, key) -> torch.Tensor:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        return fuse_all(self.attr[rows], self.identity[rows], self.alpha)[..., cols]

    def float(self) -> torch.Tensor:
        return self[:]


def fuse_all(attr: torch.Tensor, identity: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 5: ``[attr, (1 − α)·identity]`` along the feature axis ((N, Da), (N, Di) -> (N, Da + Di))."""
    return torch.cat([attr, (1.0 - alpha) * identity], dim=-1)


def check_features(features: dict[str, Any], features_path: str | Path, manifest_path: str | Path | None = None,
                   model_path: str | Path | None = None) -> None:
    """Refuse features that were not computed from the given manifest or model (their recorded sha256)."""
    provenance = features.get("provenance") or {}
    for label, given, key in (("manifest", manifest_path, "manifest_sha256"), ("model", model_path, "model_sha256")):
        if given is None:
            continue
        recorded = provenance.get(key)
        if recorded is None:
            raise AgnetError(f"{features_path}: the features do not record the {label} they came from "
                             f"(written by an older agnet); rerun `agnet extract`")
        actual = sha256_file(Path(given))
        if actual != recorded:
            raise AgnetError(f"{features_path}: stale features: they were extracted from another {label} than "
                             f"{given} (sha256 {recorded[:12]}… vs {actual[:12]}…); rerun `agnet extract`")
