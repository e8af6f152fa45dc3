"""Checkpoints that survive a killed job: written atomically, holding everything a resume needs.

A checkpoint is a dict: ``model``, ``optimizer``, ``scheduler``, ``scaler`` state dicts; ``position``
(``epoch``, ``step``: the next batch to run); ``rng`` (torch CPU/CUDA, NumPy, Python); ``meter``
(the running sums of the interrupted epoch); ``rows`` (the per-epoch log so far); ``settings``,
``seed`` and ``manifest_sha256`` (a resume with anything else is refused).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agnet.atomic import atomic_path
from agnet.errors import AgnetError

# Settings that change how a run executes, not what it computes: they may differ on resume.
OPERATIONAL = frozenset({"workers", "log_every", "decoded_cache"})


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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (a kill mid-write leaves the previous checkpoint intact)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain Python values only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise AgnetError(f"{path}: unreadable checkpoint ({error}); delete it to start the run afresh") from None


def check_compatible(state: dict[str, Any], settings: dict[str, Any], seed: int, manifest_sha256: str,
                     path: Path) -> None:
    """Refuse to resume a run whose settings, seed or training data differ from the checkpoint's."""
    saved = {k: v for k, v in state["settings"].items() if k not in OPERATIONAL}
    wanted = {k: v for k, v in settings.items() if k not in OPERATIONAL}
    problems = [f"{k}: checkpoint {saved.get(k)!r}, now {wanted.get(k)!r}"
                for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    if state["seed"] != seed:
        problems.append(f"seed: checkpoint {state['seed']}, now {seed}")
    if state["manifest_sha256"] != manifest_sha256:
        problems.append("manifest: the training data changed since the checkpoint")
    if problems:
        raise AgnetError(
            f"{path} was written with a different configuration; refusing to resume:\n  "
            + "\n  ".join(problems) + "\nDelete the checkpoint to start over with the new configuration."
        )
