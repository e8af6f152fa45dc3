"""Feature extraction: the paper's test descriptors (Eq. 5) for every evaluation image of a run.

``features.pt`` (a ``torch.save`` dict, loadable with ``weights_only=True``) holds

* ``paths``: image paths (manifest keys), each image decoded once;
* ``Attr`` (N, D), ``ID`` (N, D), ``All`` (N, 2D): the descriptors, ``All = [Attr, (1 − α)·ID]``, stored as
  float16 unit vectors plus float32 norms (``<name>_norm``, (N, 1)) — compact, and safe from float16
  overflow; :func:`load_features` multiplies them back (float32);
* ``provenance``: variant, seed, model file sha256, α, input size, device, precision, versions.

On a GPU, inference runs under autocast (bf16 where supported) with channels_last; on a CPU in
float32. Images are resized to the training input size without augmentation.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from agnet import __version__
from agnet.data.fetch import sha256_file
from agnet.data.manifest import read_manifest
from agnet.errors import AgnetError
from agnet.model import AGNet, build_trunk, descriptors
from agnet.train.checkpoint import save_checkpoint
from agnet.train.data import load_resized, to_tensor
from agnet.train.settings import TrainSettings, from_dict

DESCRIPTORS = ("Attr", "ID", "All")


def load_trained(model_path: str | Path) -> tuple[AGNet, TrainSettings, dict[str, Any]]:
    """Rebuild a trained AGNet from ``model.pt`` (strict: every weight must match)."""
    model_path = Path(model_path)
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
        record = state["record"]
        settings = from_dict(record["settings"])
    except Exception as error:  # noqa: BLE001 - unreadable, unpicklable or incomplete: the same to the user
        raise AgnetError(f"{model_path}: not a model written by `agnet train` ({error})") from None
    model = AGNet(build_trunk(settings.backbone), record["num_classes"], len(record["color_names"]),
                  len(record["type_names"]), settings.embedding_dim)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as error:
        raise AgnetError(f"{model_path}: weights do not fit the model they describe ({error})") from None
    return model.eval(), settings, record


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], input_size: tuple[int, int]):
        self.paths, self.input_size = paths, input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(load_resized(self.paths[index], self.input_size), flip=False)


def evaluation_paths(frame) -> list[str]:
    """Unique image paths of every split but ``train``, in manifest order: the test/query/gallery images and the
    held-out ``val`` vehicles on which re-ranking tunes its weight (never an image the network trained on)."""
    return list(dict.fromkeys(frame.loc[frame["split"] != "train", "path"]))


@torch.no_grad()
def extract(model_path: str | Path, manifest_path: str | Path, out_path: str | Path, alpha: float, *,
            batch_size: int = 128, workers: int = 2,
            device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Write ``features.pt`` for the evaluation images of ``manifest_path``; returns the provenance."""
    if not 0.0 <= alpha <= 1.0:
        raise AgnetError(f"feature alpha must be in [0, 1], got {alpha}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, settings, record = load_trained(model_path)
    frame, meta = read_manifest(manifest_path)
    relative = evaluation_paths(frame)
    if not relative:
        raise AgnetError(f"{manifest_path}: no evaluation images")
    root = Path(meta["root"])
    on_gpu = device.type == "cuda"
    amp = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else (torch.float16 if on_gpu else None)
    model = model.to(device)
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(_Images([str(root / p) for p in relative], settings.input_size),
                                         batch_size=batch_size, num_workers=workers, pin_memory=on_gpu)
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in DESCRIPTORS}
    for images in tqdm(loader, desc="extract", disable=not progress, mininterval=5.0):
        images = images.to(device, non_blocking=True)
        if on_gpu:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            outputs = model(images)
        for name, value in descriptors({k: v.float() for k, v in outputs.items()}, alpha).items():
            chunks[name].append(value.cpu())
    provenance = {
        "variant": settings.variant, "seed": record["seed"], "model": str(model_path),
        "model_sha256": sha256_file(Path(model_path)), "manifest": str(manifest_path), "alpha": alpha,
        "input_size": list(settings.input_size), "device": str(device), "precision": str(amp or torch.float32),
        "storage": "float16 unit vectors x float32 norms", "agnet": __version__, "torch": str(torch.__version__),
        "python": platform.python_version(),
    }
    stored: dict[str, Any] = {"paths": relative, "provenance": provenance}
    for name, parts in chunks.items():
        values = torch.cat(parts)
        if not torch.isfinite(values).all():
            raise AgnetError(f"{model_path}: the {name} descriptor has non-finite values (a diverged model?)")
        norms = values.norm(dim=1, keepdim=True)
        stored[name] = (values / norms.clamp_min(1e-12)).to(torch.float16)
        stored[f"{name}_norm"] = norms
    save_checkpoint(out_path, stored)
    return provenance


def load_features(path: str | Path) -> dict[str, Any]:
    """Read a ``features.pt`` written by :func:`extract`; descriptors come back as float32 (N, dim)."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means the same to the user
        raise AgnetError(f"{path}: unreadable features file ({error})") from None
    for name in DESCRIPTORS:
        if f"{name}_norm" in stored:
            stored[name] = stored[name].float() * stored.pop(f"{name}_norm")
    return stored
