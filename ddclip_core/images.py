"""Turning what users hand us (paths, PIL images, arrays, packed strips) into validated views.

A view is an (H, W, 3) uint8 RGB numpy array. Every problem is reported as a ValueError,
TypeError or FileNotFoundError that names the offending input, before anything reaches torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

View = np.ndarray

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})

# Decompression-bomb guard: a view larger than this is almost certainly a mistake on a robot.
MAX_PIXELS = 64_000_000


def read_image(path: str | os.PathLike) -> View:
    """Read an image file as an RGB uint8 array (alpha composited on white, like the renders)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if not path.is_file():
        raise ValueError(f"not an image file (is a directory or special file): {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_view(image, source=str(path))
    except UnidentifiedImageError as exc:
        raise ValueError(f"not a readable image file: {path}") from exc
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from exc


def pil_to_view(image: Image.Image, source: str = "PIL image") -> View:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{source}: zero-size image ({image.width}x{image.height})")
    if image.mode.startswith(("I", "F")):  # PIL would clip them to white or black, not scale them
        raise ValueError(
            f"{source}: {image.mode} pixels (16-bit or float: depth or thermal?) are not a colour view; "
            "send 8-bit colour or grey images"
        )
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return np.asarray(image.convert("RGB"))


def array_to_view(array: np.ndarray, source: str = "array") -> View:
    """Validate one (H, W, 3) image array; float arrays are read as [0, 1] RGB."""
    if array.ndim != 3 or array.shape[-1] != 3:
        if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
            hint = " (looks channel-first; views are (H, W, 3))"
        elif array.ndim == 2:
            hint = " (grey image: stack it to 3 channels)"
        else:
            hint = ""
        raise ValueError(f"{source}: expected an (H, W, 3) RGB image, got shape {array.shape}{hint}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{source}: zero-size image {array.shape[1]}x{array.shape[0]}")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ValueError(f"{source}: image of {array.shape[1]}x{array.shape[0]} exceeds {MAX_PIXELS} pixels")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{source}: float image contains NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"{source}: float images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]")
        return np.round(array * 255.0).astype(np.uint8)
    raise ValueError(f"{source}: unsupported image dtype {array.dtype}; use uint8 or float in [0, 1]")


def split_strip(view: View, num_views: int, source: str = "image") -> list[View]:
    """Split F square-ish views stacked vertically (like the published couch.jpg) into F views."""
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    height = view.shape[0]
    if height % num_views:
        raise ValueError(
            f"{source}: height {height} is not divisible by num_views={num_views} "
            f"(a strip of F views stacked vertically has height F x view height)"
        )
    return list(np.split(view, num_views, axis=0))


def to_view(item: Any, index: str) -> View:
    if isinstance(item, (str, os.PathLike)):
        return read_image(item)
    if isinstance(item, Image.Image):
        return pil_to_view(item, source=index)
    if isinstance(item, np.ndarray):
        return array_to_view(item, source=index)
    raise TypeError(f"{index}: cannot read a view from {type(item).__name__}; give a path, PIL image or array")


def _is_single_view(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike, Image.Image)) or (isinstance(item, np.ndarray) and item.ndim <= 3)


def _object_views(item: Any, num_views: int | None, name: str) -> list[View]:
    if isinstance(item, np.ndarray) and item.ndim == 4:
        if item.shape[0] == 0:
            raise ValueError(f"{name}: array with zero views, shape {item.shape}")
        images = [array_to_view(v, f"{name} view {i}") for i, v in enumerate(item)]
    elif _is_single_view(item):
        images = [to_view(item, name)]
    elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)):
        if len(item) == 0:
            raise ValueError(f"{name}: empty list of views")
        images = [to_view(v, f"{name} view {i}") for i, v in enumerate(item)]
    else:
        raise TypeError(f"{name}: cannot read views from {type(item).__name__}")
    if num_views and num_views > 1:
        images = [part for i, image in enumerate(images) for part in split_strip(image, num_views, f"{name} image {i}")]
    return images


def as_objects(views: Any, num_views: int | None = None) -> list[list[View]]:
    """Parse the accepted input forms into a list of objects, each a list of views.

    One object: an (H, W, 3) image, an (F, H, W, 3) array, a path, a PIL image, or a flat list of
    such single views. Several objects: a (B, F, H, W, 3) array, or a list whose items are each a
    list of views or an (F, H, W, 3) array. num_views=F splits every image into F stacked views.
    """
    if num_views is not None and num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if isinstance(views, np.ndarray):
        if views.ndim == 5:
            if views.shape[0] == 0:
                raise ValueError(f"empty batch: array of shape {views.shape}")
            return [_object_views(obj, num_views, f"object {i}") for i, obj in enumerate(views)]
        if views.ndim in (3, 4):
            return [_object_views(views, num_views, "object 0")]
        raise ValueError(f"views array must be (H, W, 3), (F, H, W, 3) or (B, F, H, W, 3); got shape {views.shape}")
    if _is_single_view(views):
        return [_object_views(views, num_views, "object 0")]
    if isinstance(views, Sequence) and not isinstance(views, bytes):
        if len(views) == 0:
            raise ValueError("no views given (empty list)")
        if all(_is_single_view(v) for v in views):
            return [_object_views(list(views), num_views, "object 0")]
        return [_object_views(obj, num_views, f"object {i}") for i, obj in enumerate(views)]
    raise TypeError(f"cannot read views from {type(views).__name__}")
