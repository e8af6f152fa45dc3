"""Checkpoints that survive a killed job: written atomically, holding everything a resume needs.

A checkpoint is a dict: ``model``, ``optimizer``, ``scheduler``, ``scaler`` state dicts; ``position``
(``epoch``, ``step``: the next batch to run); ``rng`` (torch CPU/CUDA, NumPy, Python); ``meter``
(the running sums of the interrupted epoch) and ``pending`` (device sums not yet folded into it);
``rows`` (the per-epoch log so far); ``settings``, ``seed`` and ``training_data_sha256`` (a resume with
anything else is refused, except the settings passed as ``--allow-changed``).
"""

from __future__ import annotations

import errno
import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agnet.errors import AgnetError
from agnet.fileio import atomic_path
from agnet.settings import OPERATIONAL as OPERATIONAL_SETTINGS
from agnet.settings import canonical_training

# Settings that change how a run executes, not what it computes (agnet.settings.OPERATIONAL): they may differ on
# resume, as they never trigger a rerun.
OPERATIONAL = frozenset(OPERATIONAL_SETTINGS["training"])
# Settings that may differ on resume when asked for (``--allow-changed``): the schedule, not the model.
CHANGEABLE = ("lr", "lr_milestones", "lr_gamma", "epochs", "max_steps")


def rng_state() -> dict[str, Any]:
    """Every random generator's state (global ones; the data pipeline derives its own from the seed)."""
    bit_generator = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [bit_generator[0], torch.from_numpy(bit_generator[1].astype(np.int64)), *bit_generator[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])


def _write_file(path: Path, data: memoryview) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (a kill mid-write leaves the previous checkpoint intact).

    The state is serialised in memory first and written with plain file I/O, so a full disk is one
    clear error naming the file (torch.save would report "unexpected pos"); the temporary file is
    removed and the previous file at ``path`` stays as it was.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        with atomic_path(path) as tmp:
            _write_file(tmp, buffer.getbuffer())
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise AgnetError(
                f"{path}: no space left on device while writing it ({buffer.tell() / 2**20:.0f} MB); the previous "
                f"{path.name}, if any, is intact - free space, then rerun with --resume") from None
        raise AgnetError(f"{path}: cannot write ({error.strerror or error})") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain Python values only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise AgnetError(f"{path}: unreadable checkpoint ({error}); delete it to start the run afresh") from None


def check_compatible(state: dict[str, Any], settings: dict[str, Any], seed: int, data_sha256: str,
                     path: Path, allow: tuple[str, ...] = (), finished: bool = False) -> dict[str, list[Any]]:
    """Refuse to resume a run whose settings, seed or training data differ from the checkpoint's.

    ``allow``: keys of :data:`CHANGEABLE` that may differ; returns those that do, as
    ``{key: [checkpoint value, new value]}``. ``finished``: ``path`` is a complete run's model.pt.
    The data are compared by :func:`agnet.train.loop.training_data_sha256` (not the dataset's location).
    """
    unknown = [k for k in allow if k not in CHANGEABLE]
    if unknown:
        raise AgnetError(f"--allow-changed {', '.join(unknown)}: only {', '.join(CHANGEABLE)} may change on resume")
    defaults = {"max_steps": None, "compile": False}  # keys newer than some checkpoints
    # canonical: what a variant does not read (a CE variant's ALS constants) or 1 vs 1.0 compares equal
    saved = {k: v for k, v in canonical_training({**defaults, **state["settings"]}).items() if k not in OPERATIONAL}
    wanted = {k: v for k, v in canonical_training({**defaults, **settings}).items() if k not in OPERATIONAL}
    differing = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    changed = {k: [saved.get(k), wanted.get(k)] for k in differing if k in allow and not finished}
    what = "model.pt" if finished else "checkpoint"
    problems = [f"{k}: {what} {saved.get(k)!r}, now {wanted.get(k)!r}" for k in differing if k not in changed]
    if state["seed"] != seed:
        problems.append(f"seed: {what} {state['seed']}, now {seed}")
    if "training_data_sha256" not in state:
        problems.append("written by an older agnet (different epoch plan: it kept the incomplete last batch)")
    elif state["training_data_sha256"] != data_sha256:
        problems.append("manifest: the training data (paths or labels of the training rows) changed since then")
    if problems and finished:
        raise AgnetError(
            f"{path}: this run is complete but was trained with a different configuration; refusing to touch it:\n  "
            + "\n  ".join(problems) + "\nDelete the run directory to train it with the new configuration."
        )
    if problems:
        hint = ""
        if any(p.split(":")[0] in CHANGEABLE for p in problems):
            hint = ("\nTo continue with a changed schedule on purpose, add --allow-changed "
                    + ",".join(k for k in differing if k in CHANGEABLE) + " (recorded in run.json 'resumes').")
        raise AgnetError(
            f"{path} was written with a different configuration; refusing to resume:\n  "
            + "\n  ".join(problems) + hint
            + "\nDelete the checkpoint to start over with the new configuration."
        )
    return changed
