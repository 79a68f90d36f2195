"""sensor_msgs/Image <-> numpy: encodings, row padding, endianness, compressed images, masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("sensor_msgs", reason="ROS message packages not installed: scripts/setup.sh installs them")
from sensor_msgs.msg import CompressedImage, Image

from ddclip_ros.image_conversion import (
    apply_mask,
    compressed_to_rgb,
    image_to_array,
    image_to_rgb,
    mask_to_bool,
    rgb_to_image,
)

RNG = np.random.default_rng(0)


def make_image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """Serialise pixels the way a camera driver would, with ``pad`` bytes of padding per row."""
    height, width = pixels.shape[:2]
    data = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<")).tobytes()
    row = len(data) // height
    padded = b"".join(data[r * row : (r + 1) * row] + b"\xee" * pad for r in range(height))
    return Image(height=height, width=width, encoding=encoding, is_bigendian=bigendian, step=row + pad, data=padded)


def test_colour_encodings_with_row_padding():
    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_rgb(make_image(rgb, "rgb8", pad=3)), rgb)
    np.testing.assert_array_equal(image_to_rgb(make_image(rgb[:, :, ::-1], "bgr8", pad=1)), rgb)
    opaque = np.concatenate([rgb, np.full((5, 7, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_to_rgb(make_image(opaque, "rgba8")), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], np.full((5, 7, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_to_rgb(make_image(bgra, "bgra8", pad=4)), rgb)


@pytest.mark.parametrize("encoding", ["rgba8", "bgra8", "rgba16"])
def test_alpha_is_composited_on_white_like_the_renders(encoding):
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    alpha = np.array([0, 64, 128, 255, 255], np.uint8)[None, :, None].repeat(4, axis=0)
    colour = rgb[:, :, ::-1] if encoding.startswith("bgr") else rgb
    pixels = np.concatenate([colour, alpha], axis=2)
    if encoding.endswith("16"):
        pixels = pixels.astype(np.uint16) * 257  # the same values in 16 bits
    out = image_to_rgb(make_image(pixels, encoding))
    expected = (rgb.astype(float) * alpha / 255 + 255 * (1 - alpha / 255)).round()
    np.testing.assert_allclose(out, expected, atol=1)
    assert (out[:, 0] == 255).all()  # fully transparent: white, not black
    np.testing.assert_array_equal(out[:, 3:], rgb[:, 3:])  # opaque: unchanged


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1", "mono16"])
def test_depth_images_are_not_colour_views(encoding):
    depth = np.ones((4, 6, 1), np.float32 if encoding == "32FC1" else np.uint16)
    with pytest.raises(ValueError, match=f"a {encoding} image is depth, not a colour view"):
        image_to_rgb(make_image(depth, encoding))
    assert image_to_array(make_image(depth, encoding)).shape == (4, 6, 1)  # still readable as depth


@pytest.mark.parametrize("bigendian", [False, True])
def test_sixteen_bit_and_float_encodings_honour_endianness(bigendian):
    deep = RNG.integers(0, 65536, (4, 6, 1), dtype=np.uint16)
    np.testing.assert_array_equal(image_to_array(make_image(deep, "16UC1", pad=2, bigendian=bigendian)), deep)
    colour = RNG.integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    np.testing.assert_array_equal(
        image_to_rgb(make_image(colour, "rgb16", bigendian=bigendian)), (colour >> 8).astype(np.uint8)
    )
    depth = RNG.uniform(0.5, 3.0, (4, 6, 1)).astype(np.float32)
    depth[0, 0] = np.nan
    np.testing.assert_array_equal(image_to_array(make_image(depth, "32FC1", bigendian=bigendian))[1:], depth[1:])


def test_mono8_becomes_grey_rgb():
    mono = RNG.integers(0, 256, (3, 3, 1), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_rgb(make_image(mono, "mono8")), np.repeat(mono, 3, axis=2))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoding": "yuv422"}, "unsupported image encoding 'yuv422'"),
        ({"width": 0, "height": 0, "step": 0, "data": b""}, "zero-size image"),
        ({"step": 5}, "step 5 is smaller than a row"),
        ({"step": 22}, r"data has 63 bytes, expected step x height = 22 x 3 = 66"),
        ({"width": 100_000, "height": 100_000, "step": 300_000}, "exceeds"),
    ],
)
def test_bad_images_are_named(change, message):
    msg = make_image(RNG.integers(0, 256, (3, 7, 3), dtype=np.uint8), "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ValueError, match=message):
        image_to_rgb(msg)


def test_compressed_images():
    rgb = RNG.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, format="PNG")
    np.testing.assert_array_equal(compressed_to_rgb(CompressedImage(format="png", data=buffer.getvalue())), rgb)
    transparent = np.zeros((8, 9, 4), np.uint8)  # a PNG with alpha 0 everywhere: white, as the renders
    buffer = io.BytesIO()
    PILImage.fromarray(transparent).save(buffer, format="PNG")
    assert (compressed_to_rgb(CompressedImage(format="png", data=buffer.getvalue())) == 255).all()
    with pytest.raises(ValueError, match="cannot decode compressed image"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=b"not a jpeg"))
    with pytest.raises(ValueError, match="no data"):
        compressed_to_rgb(CompressedImage(format="jpeg"))


@pytest.mark.parametrize(
    "pixels",
    [np.full((8, 9), 40000, np.uint16), np.full((8, 9), 0.5, np.float32)],  # a thermal png, a float tiff
)
def test_compressed_16_bit_or_float_images_are_refused_not_misread(pixels):
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG" if pixels.dtype == np.uint16 else "TIFF")
    with pytest.raises(ValueError, match="16-bit or float: depth or thermal"):  # before: all white, all black
        compressed_to_rgb(CompressedImage(format="png", data=buffer.getvalue()))


def test_a_compressed_image_over_pils_own_bound_is_bad_input(monkeypatch):
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 10)
    buffer = io.BytesIO()
    PILImage.fromarray(np.zeros((8, 9, 3), np.uint8)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="compressed image too large"):  # before: DecompressionBombError
        compressed_to_rgb(CompressedImage(format="png", data=buffer.getvalue()))


def test_masks_and_round_trip():
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    mask_pixels = np.zeros((4, 5, 1), np.uint8)
    mask_pixels[1:3, 1:4] = 255
    mask = mask_to_bool(make_image(mask_pixels, "mono8"), (4, 5))
    assert mask.sum() == 6
    masked = apply_mask(rgb, mask)
    assert (masked[0] == 255).all() and (masked[1:3, 1:4] == rgb[1:3, 1:4]).all()
    assert mask_to_bool(Image(), (4, 5)) is None
    with pytest.raises(ValueError, match="mask is 5x4 but the image is 6x4"):
        mask_to_bool(make_image(mask_pixels, "mono8"), (4, 6))
    with pytest.raises(ValueError, match="single-channel"):
        mask_to_bool(make_image(rgb, "rgb8"), (4, 5))
    np.testing.assert_array_equal(image_to_rgb(rgb_to_image(rgb)), rgb)
