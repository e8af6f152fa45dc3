"""Image decoding and resizing shared by training and feature extraction (one home for both).

:func:`load_resized` decodes a file to RGB and resizes it (bilinear) to the network's input size;
:func:`to_tensor` turns the pixels into an ImageNet-normalised float tensor, optionally mirrored.
A missing, truncated or undecodable file raises :class:`~agnet.errors.AgnetError` naming the file,
never a bare ``OSError`` traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from agnet.errors import AgnetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


class ImageError(AgnetError):
    """An image listed by a dataset cannot be read (missing, truncated or not an image): one line naming it.

    Raised inside a DataLoader worker, PyTorch re-raises it in the main process as
    ``ImageError(<worker traceback text>)``; the constructor keeps only the original message.
    """

    def __init__(self, message: str):
        if message.startswith("Caught ImageError"):
            lines = [line for line in message.splitlines() if line.strip()]
            message = lines[-1].split("ImageError: ", 1)[-1]
        super().__init__(message)


def load_resized(path: str | Path, input_size: tuple[int, int]) -> np.ndarray:
    """Decode ``path`` to RGB and resize (bilinear) to ``input_size = (H, W)``: uint8 (H, W, 3)."""
    height, width = input_size
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")  # decodes every pixel: a truncated file fails here
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found (was the dataset moved or changed? "
                         "rerun `agnet data verify` on it)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (rerun `agnet data verify` on the dataset)") from None
    except (OSError, ValueError, SyntaxError) as error:  # PIL raises these for truncated or corrupt data
        raise ImageError(f"{path}: cannot decode image ({error}); the file is truncated or corrupt") from None


def to_tensor(pixels: np.ndarray, flip: bool = False) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W), optionally mirrored left-right, ImageNet-normalised."""
    if flip:
        pixels = pixels[:, ::-1]
    tensor = torch.from_numpy(np.require(pixels, requirements=["C", "W"])).permute(2, 0, 1).to(torch.float32)
    return tensor.div_(255.0).sub_(_MEAN).div_(_STD)


def load_tensor(path: str | Path, input_size: tuple[int, int], flip: bool = False) -> torch.Tensor:
    """:func:`load_resized` then :func:`to_tensor`: the network input for one image file."""
    return to_tensor(load_resized(path, input_size), flip)
