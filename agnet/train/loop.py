"""The AGNet training loop (§III.E, §IV.B): pairs in, Eq. 8 out, one epoch at a time.

Outputs in the run directory: ``model.pt`` (final weights + what is needed to rebuild the model),
``train_log.csv`` (one row per epoch: every loss term, accuracies, lr, images/s, data-wait share),
``run.json`` (settings, seed, data, versions, hardware) and, while the run is unfinished,
``checkpoint.pt`` (written atomically after every epoch and when SIGTERM/SIGUSR1 arrive).

Resuming replays exactly: the pair plan and every augmentation are pure functions of
(seed, epoch, step), and the checkpoint restores model, optimizer, scheduler, scaler, RNG states
and the sampler position. With ``deterministic`` on a CPU, a run killed at any point and resumed
ends with bit-identical weights to an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agnet import __version__
from agnet.atomic import write_text
from agnet.data.fetch import sha256_file
from agnet.data.manifest import read_manifest
from agnet.errors import AgnetError
from agnet.losses import LossWeights, total_loss
from agnet.model import AGNet, build_trunk
from agnet.train.checkpoint import check_compatible, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from agnet.train.data import DecodedCache, PairSampler, TrainSet, make_loader
from agnet.train.settings import TrainSettings
from agnet.weights import load_pretrained

LOSS_TERMS = ("total", "category", "color", "type", "verify")
CSV_COLUMNS = ("epoch", "lr", *(f"loss_{t}" for t in LOSS_TERMS), "acc_id", "acc_color", "acc_type", "acc_verify",
               "images", "seconds", "images_per_s", "data_wait_share")


class TrainingDiverged(AgnetError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(AgnetError):
    """SIGTERM/SIGUSR1 arrived; a checkpoint was saved and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass
class EpochMeter:
    """Running sums over one epoch (saved in checkpoints so an interrupted epoch's row stays complete)."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    wait: float = 0.0

    def add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value

    def row(self, epoch: int, lr: float) -> dict[str, Any]:
        def mean(key: str) -> float:
            count = self.sums.get(f"{key}_n", self.steps)
            return self.sums.get(key, 0.0) / count if count else float("nan")

        row = {"epoch": epoch, "lr": lr, **{f"loss_{t}": mean(f"loss_{t}") for t in LOSS_TERMS}}
        for key in ("acc_id", "acc_color", "acc_type", "acc_verify"):
            row[key] = mean(key)
        row.update(images=self.images, seconds=round(self.seconds, 3),
                   images_per_s=round(self.images / self.seconds, 2) if self.seconds else 0.0,
                   data_wait_share=round(self.wait / self.seconds, 4) if self.seconds else 0.0)
        return row

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "steps": self.steps, "images": self.images, "seconds": self.seconds,
                "wait": self.wait}


def _accuracy(meter: EpochMeter, key: str, logits: torch.Tensor, target: torch.Tensor) -> None:
    """Add correct/labelled counts of one batch (targets of -1 are unlabelled)."""
    labelled = target >= 0
    count = int(labelled.sum())
    if count:
        meter.add(key, float((logits.argmax(1)[labelled] == target[labelled]).sum()))
        meter.add(f"{key}_n", count)


def configure_determinism(deterministic: bool, seed: int) -> None:
    """Seed every global generator; in deterministic mode use only deterministic kernels."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def precision(settings: TrainSettings, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, channels_last) for this device: AMP and channels_last only on GPU."""
    on_gpu = device.type == "cuda"
    amp = on_gpu and settings.amp != "off"
    dtype = None
    if amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return dtype, on_gpu and settings.channels_last != "off"


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _environment(device: torch.device) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"agnet": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": str(device), "gpu": gpu,
            "threads": torch.get_num_threads()}


class _SignalFlag:
    """Remembers SIGTERM/SIGUSR1 so the loop can checkpoint at the next step boundary and stop."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def train(settings: TrainSettings, manifest: str | Path, out_dir: str | Path, seed: int, *, resume: bool = False,
          weights_cache: str | Path = "results/weights", cache_dir: str | Path = "results/cache",
          device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train one (dataset, variant, seed) run into ``out_dir``; returns the run record."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / "checkpoint.pt"
    if checkpoint_path.exists() and not resume:
        raise AgnetError(f"{checkpoint_path} exists: pass --resume to continue that run, or delete it to start over")
    configure_determinism(settings.deterministic, seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp_dtype, channels_last = precision(settings, device)

    frame, meta = read_manifest(manifest)
    manifest_sha256 = sha256_file(Path(manifest))
    train_set = TrainSet.from_manifest(frame, meta["root"], attributes=settings.uses_attributes)
    sampler = PairSampler(train_set, settings.batch_size, settings.positive_fraction,
                          settings.effective_hard_negative_fraction, seed)
    cache = DecodedCache.for_trainset(train_set, settings.input_size, cache_dir) if settings.decoded_cache else None
    trunk = build_trunk(settings.backbone)
    pretrained = load_pretrained(trunk, settings.pretrained, settings.backbone, Path(weights_cache))
    model = AGNet(trunk, train_set.num_classes, len(meta["color_names"]), len(meta["type_names"]),
                  settings.embedding_dim).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(settings.lr_milestones), settings.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    weights = LossWeights(**settings.loss_weights)

    epoch, step, rows, meter, resumes = 0, 0, [], EpochMeter(), []
    if resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        check_compatible(state, settings.to_dict(), seed, manifest_sha256, checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        epoch, step, rows = state["position"]["epoch"], state["position"]["step"], list(state["rows"])
        meter = EpochMeter(**state["meter"])
        resumes = list(state.get("resumes", [])) + [{"epoch": epoch, "step": step}]
        print(f"resuming from {checkpoint_path}: epoch {epoch + 1}, step {step} of {sampler.steps_per_epoch}",
              file=sys.stderr)

    def checkpoint(at_epoch: int, at_step: int) -> None:
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(), "position": {"epoch": at_epoch, "step": at_step},
            "meter": meter.state(), "rows": rows, "settings": settings.to_dict(), "seed": seed,
            "manifest_sha256": manifest_sha256, "resumes": resumes,
        })

    steps_per_epoch = sampler.steps_per_epoch
    with _SignalFlag() as stop:
        while epoch < settings.epochs:
            model.train()
            bar = tqdm(total=steps_per_epoch, initial=step, desc=f"epoch {epoch + 1}/{settings.epochs}",
                       disable=not progress, file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0)
            tick = time.perf_counter()
            for batch in make_loader(train_set, sampler, settings, epoch, start_step=step, seed=seed, cache=cache):
                ready = time.perf_counter()
                batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                images = batch["images"]
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    outputs = model(images)
                    half = images.shape[0] // 2
                    verify_logits = model.verify(outputs["e_id"][:half], outputs["e_id"][half:])
                terms = total_loss({k: v.float() for k, v in outputs.items()}, batch, verify_logits.float(), weights,
                                   settings.verification_loss, settings.als)
                if not math.isfinite(terms["total"].item()):
                    where = f"epoch {epoch + 1}, step {step + 1}"
                    raise TrainingDiverged(
                        f"loss became {terms['total'].item()} at {where} "
                        f"({', '.join(f'{k}={v.item():.4g}' for k, v in terms.items())}); the last good checkpoint "
                        f"({checkpoint_path.name}) is kept - lower the learning rate or check the data, then --resume"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["total"]).backward()
                scaler.step(optimizer)
                scaler.update()

                step += 1
                done = time.perf_counter()
                meter.steps += 1
                meter.images += images.shape[0]
                meter.wait += ready - tick
                meter.seconds += done - tick
                for name, value in terms.items():
                    meter.add(f"loss_{name}", value.item())
                _accuracy(meter, "acc_id", outputs["id_logits"], batch["class_id"])
                _accuracy(meter, "acc_color", outputs["color_logits"], batch["color_id"])
                _accuracy(meter, "acc_type", outputs["type_logits"], batch["type_id"])
                _accuracy(meter, "acc_verify", verify_logits, batch["same"].long())
                if step % settings.log_every == 0 or step == steps_per_epoch:
                    bar.set_postfix(loss=f"{terms['total'].item():.3f}", img_s=f"{meter.images / meter.seconds:.0f}",
                                    wait=f"{meter.wait / meter.seconds:.0%}", refresh=False)
                bar.update(1)
                if stop.received is not None:
                    checkpoint(epoch, step)
                    name = signal.Signals(stop.received).name
                    raise TrainingInterrupted(
                        f"{name} received: checkpoint saved at epoch {epoch + 1}, step {step} in {checkpoint_path}; "
                        "rerun with --resume to continue", stop.received)
                tick = time.perf_counter()
            bar.close()
            rows.append(meter.row(epoch + 1, optimizer.param_groups[0]["lr"]))
            scheduler.step()
            epoch, step, meter = epoch + 1, 0, EpochMeter()
            checkpoint(epoch, 0)
            _write_log(out_dir / "train_log.csv", rows)

    record = {
        "settings": settings.to_dict(), "seed": seed, "manifest": str(manifest), "manifest_sha256": manifest_sha256,
        "num_classes": train_set.num_classes, "color_names": meta["color_names"], "type_names": meta["type_names"],
        "dataset_format": meta["format"], "attributes_used": settings.uses_attributes,
        "hard_negative_fraction_used": settings.effective_hard_negative_fraction, "pretrained": pretrained,
        "precision": str(amp_dtype or "float32"),
        "channels_last": channels_last, "environment": _environment(device), "final": rows[-1],
        "resumes": resumes,  # where each resumption started (0-based epoch, step within it)
    }
    record = json.loads(json.dumps(record, default=str))  # plain types only: loadable with weights_only=True
    model_path = out_dir / "model.pt"
    save_checkpoint(model_path, {"model": {k: v.cpu() for k, v in model.state_dict().items()}, "record": record})
    _write_log(out_dir / "train_log.csv", rows)
    write_text(out_dir / "run.json", json.dumps(record, indent=2, default=str) + "\n")
    checkpoint_path.unlink(missing_ok=True)
    return record
