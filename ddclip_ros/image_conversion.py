"""sensor_msgs/Image and CompressedImage <-> numpy, honouring encoding, step and endianness.

No cv_bridge (ROS 2's is not installable from PyPI, and the PyPI "cv-bridge" is a broken ROS 1
port). Every problem is a ValueError that names it, so the node can log, count and drop.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from ddclip_core.images import pil_to_view

# encoding -> (dtype, channels, channel order)
ENCODINGS: dict[str, tuple[type, int, str]] = {
    "rgb8": (np.uint8, 3, "rgb"),
    "bgr8": (np.uint8, 3, "bgr"),
    "rgba8": (np.uint8, 4, "rgba"),
    "bgra8": (np.uint8, 4, "bgra"),
    "mono8": (np.uint8, 1, "mono"),
    "8UC1": (np.uint8, 1, "mono"),
    "rgb16": (np.uint16, 3, "rgb"),
    "bgr16": (np.uint16, 3, "bgr"),
    "rgba16": (np.uint16, 4, "rgba"),
    "bgra16": (np.uint16, 4, "bgra"),
    "mono16": (np.uint16, 1, "mono"),
    "16UC1": (np.uint16, 1, "mono"),
    "32FC1": (np.float32, 1, "mono"),
}
MAX_PIXELS = 64_000_000
# Single-channel 16-bit and float images are what depth cameras publish: not colour views of an object.
DEPTH_ENCODINGS = frozenset({"32FC1", "16UC1", "mono16"})


class ImageTooLarge(ValueError):
    """An image over the pixel limit: refused before its pixels are converted or decoded."""


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(f"image of {width}x{height} exceeds {max_pixels} pixels")


def image_to_array(msg: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The pixels of a sensor_msgs/Image as an (H, W, C) array of the encoding's dtype (native order)."""
    encoding = msg.encoding
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r} (supported: {', '.join(ENCODINGS)})")
    dtype, channels, _ = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ValueError(f"zero-size image ({width}x{height})")
    _check_size(width, height, max_pixels)
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if step < row_bytes:
        raise ValueError(f"step {step} is smaller than a row of {width} {encoding} pixels ({row_bytes} bytes)")
    data = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    if data.size != step * height:
        raise ValueError(f"data has {data.size} bytes, expected step x height = {step} x {height} = {step * height}")
    rows = data.reshape(height, step)[:, :row_bytes]
    order = ">" if msg.is_bigendian else "<"
    pixels = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order)).reshape(height, width, channels)
    return pixels.astype(np.dtype(dtype).newbyteorder("="), copy=False)


def image_to_rgb(msg: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A sensor_msgs/Image as an (H, W, 3) uint8 RGB view for the encoder.

    Depth images (32FC1, 16UC1, mono16) are refused: the model sees colour. Alpha (rgba8, bgra8, ...)
    is composited on white, the background of the renders the model was trained on.
    """
    if msg.encoding in DEPTH_ENCODINGS:
        raise ValueError(
            f"a {msg.encoding} image is depth, not a colour view: send rgb8, bgr8, rgba8, bgra8 or mono8 views "
            "(depth belongs in a point cloud on ddclip/points)"
        )
    return to_rgb8(image_to_array(msg, max_pixels), ENCODINGS[msg.encoding][2])


def to_rgb8(pixels: np.ndarray, order: str) -> np.ndarray:
    """(H, W, C) pixels of ``order`` (rgb, bgr, rgba, bgra, mono) as uint8 RGB; alpha over white."""
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise ValueError(f"cannot make a colour view of {pixels.dtype} pixels")
    if order == "mono":
        return np.repeat(pixels, 3, axis=2)
    if order.startswith("bgr"):
        pixels = pixels[:, :, [2, 1, 0, *range(3, pixels.shape[2])]]
    if pixels.shape[2] == 4:
        alpha = pixels[:, :, 3:].astype(np.uint16)
        blended = (pixels[:, :, :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
        return np.ascontiguousarray(blended.astype(np.uint8))
    return np.ascontiguousarray(pixels[:, :, :3])


def compressed_to_rgb(msg: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A sensor_msgs/CompressedImage (jpeg, png, ...) as an (H, W, 3) uint8 RGB array."""
    data = bytes(memoryview(msg.data).cast("B"))
    if not data:
        raise ValueError("compressed image with no data")
    try:
        with PILImage.open(io.BytesIO(data)) as image:  # reads the header only: the size is known before decoding
            _check_size(image.width, image.height, max_pixels)
            image.load()
            return pil_to_view(image, source="compressed image")  # alpha composited on white
    except PILImage.DecompressionBombError as exc:  # PIL's own bound, met before ours when it is lower
        raise ValueError(f"compressed image too large: {exc}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot decode compressed image (format {msg.format!r}): {exc}") from exc


def mask_to_bool(msg: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """An optional mono8 mask (width 0 = absent) as an (H, W) bool array matching ``shape``."""
    if int(msg.width) == 0 and int(msg.height) == 0:
        return None
    pixels = image_to_array(msg)
    if pixels.shape[2] != 1:
        raise ValueError(f"mask must be single-channel (mono8/8UC1), got {msg.encoding}")
    if pixels.shape[:2] != shape:
        raise ValueError(f"mask is {pixels.shape[1]}x{pixels.shape[0]} but the image is {shape[1]}x{shape[0]}")
    return pixels[:, :, 0] > 0


def rgb_to_image(pixels: np.ndarray, header: Any = None) -> Any:
    """An (H, W, 3) uint8 RGB array as a sensor_msgs/Image (rgb8), e.g. for the annotated topic."""
    from sensor_msgs.msg import Image

    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {pixels.dtype} {pixels.shape}")
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding="rgb8", is_bigendian=False)
    msg.step = pixels.shape[1] * 3
    msg.data = np.ascontiguousarray(pixels).tobytes()
    if header is not None:
        msg.header = header
    return msg


def apply_mask(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Object pixels kept, background set to white: the look of the renders the model was trained on."""
    if mask is None:
        return rgb
    out = rgb.copy()
    out[~mask] = 255
    return out
