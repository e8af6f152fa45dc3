"""Device and numeric precision: one decision shared by training and feature extraction.

:func:`choose_device` turns the ``--device`` flag into a ``torch.device`` (default: CUDA when present)
and refuses a device this machine does not have with one clear line. :func:`precision` reads the
``amp`` and ``channels_last`` training settings (``auto``/``on``/``off``): mixed precision (bfloat16
where the GPU supports it, else float16) and channels_last memory layout apply on a GPU only; on a
CPU everything runs in float32.
"""

from __future__ import annotations

import torch

from agnet.errors import AgnetError


def choose_device(name: str | None = None) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:1`` ...) or the best available; a missing device is an error."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AgnetError(f"--device: unknown device {name!r} (expected cpu or cuda[:N])") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AgnetError(f"--device {name}: this machine has no usable CUDA GPU (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AgnetError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise AgnetError(f"--device: unsupported device {name!r} (expected cpu or cuda[:N])")
    return device


def precision(amp: str, channels_last: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, channels_last) for ``device`` from the ``amp``/``channels_last`` settings."""
    on_gpu = device.type == "cuda"
    dtype = None
    if on_gpu and amp != "off":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return dtype, on_gpu and channels_last != "off"
