"""Device and numeric precision: one decision shared by training and feature extraction.

:func:`choose_device` turns the ``--device`` flag into a ``torch.device`` (default: CUDA when present)
and refuses a device this machine does not have with one clear line. :func:`precision` reads the
``amp`` and ``channels_last`` training settings (``auto``/``on``/``off``): with ``auto``, mixed precision
(bfloat16 from compute capability 8.0, else float16) and channels_last apply on a GPU only; ``on`` applies
them on a CPU too (bf16 autocast).
"""

from __future__ import annotations

import torch

from agnet.errors import AgnetError


def choose_device(name: str | None = None) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) or the best available; a device this machine cannot
    run is one clear :class:`AgnetError` naming the flag (checked before any data or model is loaded)."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise AgnetError(f"--device {name!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type == "mps":  # Apple GPUs
        if not torch.backends.mps.is_available():
            raise AgnetError(f"--device {name}: the MPS backend is not available here; use --device cpu")
        return device
    if device.type != "cuda":
        raise AgnetError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise AgnetError(f"--device {name}: CUDA is not available ({why}); use --device cpu, or leave --device "
                         "out to use a GPU only when there is one")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise AgnetError(f"--device {name}: there are only {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return device


def precision(amp: str, channels_last: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, channels_last) for ``device`` from the ``amp``/``channels_last`` settings.

    ``auto`` = on a GPU only, ``on`` = also on a CPU (bf16 autocast), ``off``. On a GPU the autocast type
    follows the compute capability: bf16 from 8.0 (Ampere) on, where it runs natively; fp16 (with a grad
    scaler in training) before — ``torch.cuda.is_bf16_supported()`` would also count emulated bf16.
    Training and extraction both decide here.
    """
    on_gpu = device.type == "cuda"
    dtype = None
    if amp == "on" or (amp == "auto" and on_gpu):
        if on_gpu:
            major, _ = torch.cuda.get_device_capability(device)
            dtype = torch.bfloat16 if major >= 8 else torch.float16
        else:
            dtype = torch.bfloat16
    return dtype, channels_last == "on" or (channels_last == "auto" and on_gpu)
