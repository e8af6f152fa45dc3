"""The AGNet training loop (§III.E, §IV.B): pairs in, Eq. 8 out, one epoch at a time.

Outputs in the run directory: ``model.pt`` (final weights + what is needed to rebuild the model),
``train_log.csv`` (one row per epoch: every loss term, accuracies, lr, images/s, data-wait share),
``run.json`` (settings, seed, data, versions, hardware) and, while the run is unfinished,
``checkpoint.pt`` (written atomically after every epoch and when SIGTERM/SIGUSR1/SIGINT arrive).
``.agnet-train.lock`` holds a POSIX lock while a process trains into the directory (released by
the OS when that process dies, so a stale file never blocks).

The step never reads a device value on the host: loss terms and accuracy counts are summed on the
device and read (one transfer) every ``log_every`` steps, at the end of an epoch and before any
checkpoint is written; the finite-loss check happens at those reads, so a NaN is caught before
anything could be saved. Images arrive as uint8 and are flipped and normalised on the device; one
DataLoader iterator (one set of workers) serves the whole run.

Resuming replays exactly: the pair plan and every augmentation are pure functions of
(seed, epoch, step), and the checkpoint restores model, optimizer, scheduler, scaler, RNG states
and the sampler position. With ``deterministic`` on a CPU, a run killed at any point and resumed
ends with bit-identical weights to an uninterrupted one.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
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
from agnet.data.manifest import read_manifest
from agnet.device import choose_device, precision
from agnet.errors import AgnetError
from agnet.fileio import sha256_file, write_text
from agnet.losses import LossWeights, total_loss
from agnet.model import build_model, build_trunk
from agnet.train.checkpoint import (
    OPERATIONAL,
    check_compatible,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from agnet.train.data import TrainSet, choose_cache, make_loader, make_sampler, normalise_on_device
from agnet.train.schedule import apply_changed_schedule, make_optimizer, make_scheduler
from agnet.train.settings import TrainSettings
from agnet.weights import load_pretrained

LOSS_TERMS = ("total", "category", "color", "type", "verify", "triplet")
_OLD_LOSS_TERMS = 5  # device sums saved before the triplet term existed hold one loss term fewer
CSV_COLUMNS = ("epoch", "lr", *(f"loss_{t}" for t in LOSS_TERMS), "acc_id", "acc_color", "acc_type", "acc_verify",
               "images", "seconds", "images_per_s", "data_wait_share")


ACC_KEYS = ("acc_id", "acc_color", "acc_type", "acc_verify")
# Functions of this module that may read device values on the host (tests/train/test_host_reads.py counts
# every other read made while training).
HOST_READ_POINTS = ("_read_device_sums", "_write_checkpoint", "_finish_run")
LOCK_NAME = ".agnet-train.lock"


class TrainingDiverged(AgnetError):
    """The loss became NaN or infinite; nothing computed after the last good checkpoint is saved."""


class TrainingInterrupted(AgnetError):
    """SIGTERM/SIGUSR1/SIGINT arrived; a checkpoint was saved and the run can be resumed."""

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
        for key in ACC_KEYS:
            row[key] = mean(key)
        row.update(images=self.images)
        _set_seconds(row, self.seconds, self.wait)
        return row

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "steps": self.steps, "images": self.images, "seconds": self.seconds,
                "wait": self.wait}


def _set_seconds(row: dict[str, Any], seconds: float, wait: float) -> None:
    row.update(seconds=round(seconds, 3), images_per_s=round(row["images"] / seconds, 2) if seconds else 0.0,
               data_wait_share=round(wait / seconds, 4) if seconds else 0.0)


class DeviceSums:
    """Loss terms and accuracy counts summed on the training device between two host reads.

    Layout of ``sums``: the :data:`LOSS_TERMS` (sum over steps), then ``correct, labelled`` for each of
    :data:`ACC_KEYS`. ``first_bad`` is the smallest global step whose total loss was not finite
    (``inf`` if none). Adding a step launches a few small kernels and never waits for the device.
    """

    WIDTH = len(LOSS_TERMS) + 2 * len(ACC_KEYS)

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(self.WIDTH, dtype=torch.float32, device=device)
        self.first_bad = torch.full((), math.inf, dtype=torch.float32, device=device)
        self.steps = 0  # steps added since the last fold (host-side count)

    def add(self, terms: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], batch: dict[str, Any],
            verify_logits: torch.Tensor, global_step: int) -> None:
        values = [terms[t].detach().float() for t in LOSS_TERMS]
        for logits, target in ((outputs["id_logits"], batch["class_id"]), (outputs.get("color_logits"), batch["color_id"]),
                               (outputs.get("type_logits"), batch["type_id"]), (verify_logits, batch.get("same"))):
            if logits is None:  # a model without that head (BoT) or a step without pairs: nothing counted
                values += [values[0].new_zeros(()), values[0].new_zeros(())]
                continue
            target = target.long()
            labelled = target >= 0
            values += [((logits.detach().argmax(1) == target) & labelled).sum().float(), labelled.sum().float()]
        self.sums += torch.stack(values)
        bad = torch.where(torch.isfinite(values[0]), math.inf, float(global_step))
        self.first_bad = torch.minimum(self.first_bad, bad)
        self.steps += 1

    def _read_device_sums(self) -> tuple[list[float], float]:
        """The one host read: (sums, first bad global step or inf)."""
        values = torch.cat([self.sums, self.first_bad.view(1)]).tolist()
        return values[:-1], values[-1]

    def read(self) -> tuple[list[float], float]:
        return self._read_device_sums()

    def fold_into(self, meter: EpochMeter, values: list[float]) -> None:
        """Add ``values`` (from :meth:`read`) to ``meter`` and restart the device sums."""
        for name, value in zip(LOSS_TERMS, values, strict=False):
            meter.add(f"loss_{name}", value)
        counts = values[len(LOSS_TERMS):]
        for i, key in enumerate(ACC_KEYS):
            correct, labelled = counts[2 * i], counts[2 * i + 1]
            if labelled:
                meter.add(key, correct)
                meter.add(f"{key}_n", labelled)
        self.sums.zero_()
        self.steps = 0

    def load(self, values: list[float] | None) -> None:
        """Restore sums saved in a mid-epoch checkpoint (so a resumed run's log equals an uninterrupted one's)."""
        if values:
            values = list(values)
            if len(values) == self.WIDTH - 1:  # saved before the triplet term: it was 0
                values.insert(_OLD_LOSS_TERMS, 0.0)
            self.sums.copy_(torch.tensor(values, dtype=torch.float32))


def configure_determinism(deterministic: bool, seed: int) -> None:
    """Seed every global generator; in deterministic mode use only deterministic kernels."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def training_data_sha256(frame, meta: dict[str, Any]) -> str:
    """SHA-256 of what training reads from a manifest: the training rows (relative paths, labels) and the
    label names. The dataset's location (``root``) is left out, so moving the data keeps a run resumable."""
    train = frame.loc[frame["split"] == "train", ["path", "class_id", "color_id", "type_id"]]
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": meta.get("format"), "color_names": meta.get("color_names"),
                              "type_names": meta.get("type_names")}, sort_keys=True, default=str).encode())
    digest.update(train.astype(str).to_csv(index=False, lineterminator="\n").encode())
    return digest.hexdigest()


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


def job_threads() -> int:
    """CPU cores this process may use (its affinity mask: what SLURM/Snakemake/taskset gave the job)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_LOCKED: set[str] = set()  # run directories this process trains into (POSIX locks do not exclude the owner)


class RunLock:
    """An exclusive POSIX lock on ``<run>/.agnet-train.lock`` while a process trains into ``run``.

    ``fcntl.lockf`` locks belong to the process: the OS releases them when it dies (also by SIGKILL), so
    a lock file left behind never blocks, and forked DataLoader workers do not inherit them.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self):
        key = str(self.run_dir.resolve())
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if key in _LOCKED:
                raise BlockingIOError
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AgnetError(
                f"{self.run_dir}: another process (pid {holder}) is training into this run directory; wait for "
                "it to finish or stop it (its lock goes with it), or train into another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd, self._key = fd, key
        _LOCKED.add(key)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        _LOCKED.discard(self._key)
        if exc_type is None and (self.run_dir / "model.pt").exists():
            self.path.unlink(missing_ok=True)  # a finished run keeps no lock file (removed while still held)
        os.close(self.fd)  # releases the lock; a file left by an interrupted run is harmless (only a live lock counts)


class _SignalFlag:
    """Remembers SIGTERM/SIGUSR1/SIGINT so the loop can checkpoint at the next step boundary and stop.

    A second Ctrl-C before that boundary stops at once (KeyboardInterrupt; the last checkpoint stays).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def verification_logits(model, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor | None:
    """The verification head on the batch's pairs: anchors (first half) with partners (second half), or the
    ``pair_left``/``pair_right`` slots of a P × K batch; None for a model without the head (BoT)."""
    if not hasattr(model, "verify"):
        return None
    e_id = outputs["e_id"]
    if "pair_left" in batch:
        return model.verify(e_id[batch["pair_left"]], e_id[batch["pair_right"]])
    half = e_id.shape[0] // 2
    return model.verify(e_id[:half], e_id[half:])


def _complete_run(model_path: Path, settings: TrainSettings, seed: int, data_sha256: str,
                  resume: bool) -> dict[str, Any]:
    """A finished run (model.pt, no checkpoint): never retrained silently.

    With ``--resume`` and the same settings, seed and data it is reported complete (nothing is done);
    otherwise the call is refused with what differs.
    """
    if not resume:
        raise AgnetError(f"{model_path} exists: this run is complete. Delete the run directory to train it again, "
                         "or choose another --out (with --resume, a complete run is left as it is)")
    try:
        record = load_checkpoint(model_path)["record"]
    except (KeyError, TypeError):
        raise AgnetError(f"{model_path}: not a model written by `agnet train`; delete it to train this run") from None
    state = {"settings": record["settings"], "seed": record["seed"]}
    if "training_data_sha256" in record:
        state["training_data_sha256"] = record["training_data_sha256"]
    check_compatible(state, settings.to_dict(), seed, data_sha256, model_path, finished=True)
    return {**record, "already_complete": True}


def train(settings: TrainSettings, manifest: str | Path, out_dir: str | Path, seed: int, *, resume: bool = False,
          weights_cache: str | Path = "results/weights", cache_dir: str | Path | None = None,
          device: str | None = None, progress: bool = True, threads: int | None = None,
          allow_changed: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train one (dataset, variant, seed) run into ``out_dir``; returns the run record.

    ``cache_dir``: folder of decoded-image caches (default ``<out_dir>/cache``). ``threads``: the job's
    CPU threads (default: its affinity mask); loader workers are capped by it. ``allow_changed``: settings
    that may differ from the checkpoint's on ``resume`` (recorded in ``resumes``), e.g. ``("lr",)`` after
    a divergence. On a finished run (``model.pt``, no checkpoint) ``resume`` returns its record with
    ``already_complete`` set; without ``resume`` it is refused.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(out_dir):
        return _train_locked(settings, manifest, out_dir, seed, resume=resume, weights_cache=weights_cache,
                             cache_dir=out_dir / "cache" if cache_dir is None else Path(cache_dir), device=device,
                             progress=progress, threads=threads, allow_changed=tuple(allow_changed))


def _train_locked(settings: TrainSettings, manifest, out_dir: Path, seed: int, *, resume: bool, weights_cache,
                  cache_dir: Path, device, progress: bool, threads: int | None,
                  allow_changed: tuple[str, ...]) -> dict[str, Any]:
    checkpoint_path, model_path = out_dir / "checkpoint.pt", out_dir / "model.pt"
    if checkpoint_path.exists() and not resume:
        raise AgnetError(f"{checkpoint_path} exists: pass --resume to continue that run, or delete it to start over")
    frame, meta = read_manifest(manifest)
    data_sha256 = training_data_sha256(frame, meta)
    if model_path.exists() and not checkpoint_path.exists():
        return _complete_run(model_path, settings, seed, data_sha256, resume)
    configure_determinism(settings.deterministic, seed)
    device = choose_device(device)
    amp_dtype, channels_last = precision(settings.amp, settings.channels_last, device)

    manifest_sha256 = sha256_file(Path(manifest))
    train_set = TrainSet.from_manifest(frame, meta["root"], attributes=settings.uses_attributes)
    sampler = make_sampler(train_set, settings, seed)
    threads = threads or job_threads()
    workers = min(settings.workers, threads)
    cache, cache_note = choose_cache(settings.decoded_cache, train_set, settings.input_size, cache_dir, threads)
    print(f"agnet train: {cache_note}; {workers} loader worker(s)", file=sys.stderr)
    trunk = build_trunk(settings.backbone, settings.last_stride)
    pretrained = load_pretrained(trunk, settings.pretrained, settings.backbone, Path(weights_cache))
    model = build_model(settings, train_set.num_classes, len(meta["color_names"]), len(meta["type_names"]),
                        trunk=trunk).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fused = device.type == "cuda"  # one kernel for the whole update; CPU keeps the reference implementation
    optimizer = make_optimizer(settings, model.parameters(), fused)
    scheduler = make_scheduler(optimizer, settings)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    weights = LossWeights(**settings.loss_weights)
    # the verification head runs on every pair batch (as it always has); on P x K batches only where it is weighted
    verifying = settings.sampler == "pairs" or weights.verify > 0
    trick_losses = {}  # BoT's loss settings, passed only where on (the AGNet step's call stays as it was)
    if settings.id_label_smoothing:
        trick_losses["id_label_smoothing"] = settings.id_label_smoothing
    if settings.uses_triplet:
        trick_losses["triplet"] = settings.triplet
    # torch.compile: the checkpoint is always taken from ``model`` (its keys carry no compile prefix).
    forward = torch.compile(model, dynamic=False) if settings.compile else model

    epoch, step, rows, meter, resumes = 0, 0, [], EpochMeter(), []
    last_good: dict[str, int] | None = None  # position of the checkpoint on disk
    device_sums = DeviceSums(device)
    if resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        changed = check_compatible(state, settings.to_dict(), seed, data_sha256, checkpoint_path,
                                   allow=allow_changed)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        epoch, step, rows = state["position"]["epoch"], state["position"]["step"], list(state["rows"])
        meter = EpochMeter(**state["meter"])
        device_sums.load(state.get("pending"))
        entry: dict[str, Any] = {"epoch": epoch, "step": step}
        if changed:
            apply_changed_schedule(settings, optimizer, scheduler, epoch)
            entry["changed"] = changed
        resumes = list(state.get("resumes", [])) + [entry]
        last_good = {"epoch": epoch, "step": step}
        print(f"resuming from {checkpoint_path}: epoch {epoch + 1}, step {step} of {sampler.steps_per_epoch}"
              + (f" (changed: {', '.join(changed)})" if changed else ""), file=sys.stderr)

    steps_per_epoch = sampler.steps_per_epoch
    total_steps = settings.epochs * steps_per_epoch
    stop_at = min(total_steps, settings.max_steps) if settings.max_steps else total_steps
    global_step = epoch * steps_per_epoch + step

    def _write_checkpoint(at_epoch: int, at_step: int, pending: list[float] | None) -> None:
        nonlocal last_good
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(), "position": {"epoch": at_epoch, "step": at_step},
            "meter": meter.state(), "pending": pending, "rows": rows, "settings": settings.to_dict(), "seed": seed,
            "manifest_sha256": manifest_sha256, "training_data_sha256": data_sha256, "resumes": resumes,
        })
        last_good = {"epoch": at_epoch, "step": at_step}

    def checked_read() -> list[float]:
        """Read the device sums; stop with a clear, followable message if a loss was not finite."""
        values, first_bad = device_sums.read()
        if math.isfinite(first_bad) or not all(math.isfinite(v) for v in values[:len(LOSS_TERMS)]):
            bad = int(first_bad) if math.isfinite(first_bad) else global_step - 1
            terms = [t for t, v in zip(LOSS_TERMS, values, strict=False) if not math.isfinite(v)]
            where = f"epoch {bad // steps_per_epoch + 1}, step {bad % steps_per_epoch + 1}"
            if last_good is not None:
                advice = (f"the last good checkpoint ({checkpoint_path.name}, epoch {last_good['epoch'] + 1}, step "
                          f"{last_good['step']}) is kept and nothing later was saved. To continue from it with a "
                          "lower learning rate, lower training.lr in the config and rerun with --resume "
                          "--allow-changed lr (recorded in run.json 'resumes'); or check the data")
            else:
                advice = ("no checkpoint was written yet (the loss diverged before the end of the first epoch), so "
                          "there is nothing to resume: lower training.lr in the config and start the run again; "
                          "or check the data")
            raise TrainingDiverged(f"loss became non-finite at {where} (non-finite terms: "
                                   f"{', '.join(terms) or 'total'}); {advice}")
        return values

    def fold() -> None:
        device_sums.fold_into(meter, checked_read())

    bar = None
    stopped_early = False
    with _SignalFlag() as stop:
        if global_step < stop_at:
            end_epoch = min(settings.epochs, -(-stop_at // steps_per_epoch))
            loader = make_loader(train_set, sampler, settings, epoch, start_step=step, seed=seed, cache=cache,
                                 end_epoch=end_epoch, workers=workers)
            tick = time.perf_counter()
            for batch in loader:
                ready = time.perf_counter()
                if bar is None:
                    model.train()
                    bar = tqdm(total=steps_per_epoch, initial=step, desc=f"epoch {epoch + 1}/{settings.epochs}",
                               disable=not progress, file=sys.stderr,
                               mininterval=1.0 if sys.stderr.isatty() else 30.0)
                assert (batch["epoch"], batch["step"]) == (epoch, step), "loader out of step with the loop"
                on_device = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
                images = normalise_on_device(on_device["images"], on_device["flipped"], channels_last,
                                             erase=on_device.get("erase"))
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    outputs = forward(images)
                    verify_logits = verification_logits(model, outputs, on_device) if verifying else None
                terms = total_loss({k: v.float() for k, v in outputs.items()}, on_device,
                                   None if verify_logits is None else verify_logits.float(), weights,
                                   settings.verification_loss, settings.als, **trick_losses)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["total"]).backward()
                scaler.step(optimizer)
                scaler.update()
                device_sums.add(terms, outputs, on_device, verify_logits, global_step)

                step += 1
                global_step += 1
                meter.steps += 1
                meter.images += images.shape[0]
                if step % settings.log_every == 0 or step == steps_per_epoch or global_step == stop_at:
                    fold()  # the only host read of a step, every log_every steps
                    bar.set_postfix(loss=f"{meter.sums['loss_total'] / meter.steps:.3f}",
                                    img_s=f"{meter.images / max(meter.seconds, 1e-9):.0f}",
                                    wait=f"{meter.wait / max(meter.seconds, 1e-9):.0%}", refresh=False)
                done = time.perf_counter()
                meter.wait += ready - tick
                meter.seconds += done - tick
                bar.update(1)
                if step == steps_per_epoch:
                    bar.close()
                    bar = None
                    rows.append(meter.row(epoch + 1, optimizer.param_groups[0]["lr"]))
                    scheduler.step()
                    finished = meter
                    epoch, step, meter = epoch + 1, 0, EpochMeter()
                    if global_step < stop_at:
                        saving = time.perf_counter()
                        _write_checkpoint(epoch, 0, None)
                        # the checkpoint's time counts in the epoch's images/s (the row saved in it lacks it)
                        _set_seconds(rows[-1], finished.seconds + time.perf_counter() - saving, finished.wait)
                        _write_log(out_dir / "train_log.csv", rows)
                if global_step >= stop_at:
                    break
                if stop.received is not None:
                    saving = time.perf_counter()
                    values = checked_read()  # never save weights a non-finite loss has touched
                    _write_checkpoint(epoch, step, values)
                    meter.seconds += time.perf_counter() - saving
                    name = signal.Signals(stop.received).name
                    raise TrainingInterrupted(
                        f"{name} received: checkpoint saved at epoch {epoch + 1}, step {step} in {checkpoint_path}; "
                        "to continue, rerun the same command with --resume", stop.received)
                tick = time.perf_counter()
            if bar is not None:
                bar.close()
            if step:  # stopped by max_steps inside an epoch: its partial row
                rows.append(meter.row(epoch + 1, optimizer.param_groups[0]["lr"]))
                stopped_early = True

    return _finish_run(settings, model, out_dir, rows, resumes, seed=seed, manifest=manifest,
                       manifest_sha256=manifest_sha256, data_sha256=data_sha256, train_set=train_set, meta=meta,
                       pretrained=pretrained, amp_dtype=amp_dtype, channels_last=channels_last, device=device,
                       workers=workers, cache=cache, fused=fused, steps=global_step, total_steps=total_steps,
                       partial_epoch=stopped_early)


def _finish_run(settings: TrainSettings, model: torch.nn.Module, out_dir: Path, rows: list[dict[str, Any]],
                resumes: list[dict[str, Any]], *, seed, manifest, manifest_sha256, data_sha256, train_set, meta,
                pretrained, amp_dtype, channels_last, device, workers, cache, fused, steps, total_steps,
                partial_epoch) -> dict[str, Any]:
    """Write model.pt, train_log.csv and run.json, then remove the checkpoint."""
    truncated = steps < total_steps
    record = {
        "settings": settings.to_dict(), "operational_settings": sorted(OPERATIONAL), "seed": seed,
        "manifest": str(manifest), "manifest_sha256": manifest_sha256,
        "training_data_sha256": data_sha256,
        "num_classes": train_set.num_classes, "color_names": meta["color_names"], "type_names": meta["type_names"],
        "dataset_format": meta["format"], "attributes_used": settings.uses_attributes,
        "hard_negative_fraction_used": settings.effective_hard_negative_fraction, "pretrained": pretrained,
        "precision": str(amp_dtype or "float32"), "channels_last": channels_last, "compiled": settings.compile,
        "optimizer": ("Adam" if settings.optimizer == "adam" else "SGD") + (" (fused)" if fused else ""), "workers_used": workers, "decoded_cache_used": cache is not None,
        "environment": _environment(device), "final": rows[-1],
        # a run cut short by max_steps can never pass for a full one
        "steps": steps, "steps_per_epoch": total_steps // settings.epochs, "truncated": truncated,
        "max_steps": settings.max_steps, "partial_last_epoch": partial_epoch,
        "resumes": resumes,  # where each resumption started (0-based epoch, step within it; settings changed)
    }
    record = json.loads(json.dumps(record, default=str))  # plain types only: loadable with weights_only=True
    save_checkpoint(out_dir / "model.pt", {"model": {k: v.cpu() for k, v in model.state_dict().items()},
                                           "record": record})
    _write_log(out_dir / "train_log.csv", rows)
    write_text(out_dir / "run.json", json.dumps(record, indent=2, default=str) + "\n")
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    return record
