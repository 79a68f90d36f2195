"""Every accepted input form, preprocessing options, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddclip_core import DuoduoCLIP
from tests.conftest import random_views


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_paths_pil_and_arrays_give_the_same_embedding(tiny_model: DuoduoCLIP, tmp_path):
    views = random_views(3, seed=1)
    paths = []
    for i, view in enumerate(views):
        Image.fromarray(view).save(tmp_path / f"v{i}.png")
        paths.append(tmp_path / f"v{i}.png")
    reference = tiny_model.encode_views(views)
    _close(tiny_model.encode_views(paths), reference)
    _close(tiny_model.encode_views([str(p) for p in paths]), reference)
    _close(tiny_model.encode_views([Image.fromarray(v) for v in views]), reference)
    _close(tiny_model.encode_views(list(views)), reference)
    _close(tiny_model.encode_views(views.astype(np.float32) / 255.0), reference)


def test_single_image_and_batch_array_forms(tiny_model):
    views = random_views(2, seed=2)
    assert tiny_model.encode_views(views[0]).shape == (1, 32)
    batch = np.stack([views, views[::-1]])
    out = tiny_model.encode_views(batch)
    assert out.shape == (2, 32)
    _close(out[0], out[1])  # same views, other order


def test_list_of_objects_mixing_forms(tiny_model, tmp_path):
    a, b = random_views(2, seed=3), random_views(1, seed=4)
    Image.fromarray(b[0]).save(tmp_path / "b.png")
    out = tiny_model.encode_views([a, [tmp_path / "b.png"]])
    _close(out, torch.cat([tiny_model.encode_views(a), tiny_model.encode_views(b)]))


def test_alpha_images_are_composited_on_white(tiny_model, tmp_path):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[16:48, 16:48] = (200, 30, 30, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    white = np.full((64, 64, 3), 255, dtype=np.uint8)
    white[16:48, 16:48] = (200, 30, 30)
    _close(tiny_model.encode_views(tmp_path / "a.png"), tiny_model.encode_views(white))


def test_packed_strip_of_views(tiny_model, tmp_path):
    views = random_views(12, seed=5)
    strip = np.concatenate(list(views), axis=0)  # 2688 x 224, like the published couch.jpg
    assert strip.shape == (2688, 224, 3)
    Image.fromarray(strip).save(tmp_path / "couch.png")
    reference = tiny_model.encode_views(views)
    _close(tiny_model.encode_views(strip, num_views=12), reference)
    _close(tiny_model.encode_views(tmp_path / "couch.png", num_views=12), reference)
    with pytest.raises(ValueError, match="not divisible by num_views=5"):
        tiny_model.encode_views(strip, num_views=5)


def test_any_input_size(tiny_model):
    rng = np.random.default_rng(6)
    views = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((100, 300), (480, 640), (224, 224), (33, 33))]
    out = tiny_model.encode_views(views)
    assert out.shape == (1, 32) and torch.isfinite(out).all()


def test_center_crop_is_deterministic_random_crop_is_not(tiny_model):
    views = random_views(2, seed=7)
    _close(tiny_model.encode_views(views), tiny_model.encode_views(views))
    tiny_model.set_preprocessing(crop="random")
    generator = torch.Generator().manual_seed(0)
    tiny_model.preprocessor.generator = generator
    draws = [tiny_model.encode_views(views) for _ in range(4)]
    assert any((draws[0] - d).abs().max() > 1e-6 for d in draws[1:])


def test_center_crop_matches_the_published_recipe(tiny_model):
    view = random_views(1, seed=8)[0]
    x = torch.from_numpy(view).permute(2, 0, 1)[None].float() / 255
    x = x[:, :, 8:216, 8:216]  # the 208 px crop, centred
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    _close(tiny_model.preprocessor([view]), (x - mean) / std)


def test_pad_resize_keeps_aspect(tiny_model):
    tall = np.zeros((200, 100, 3), dtype=np.uint8)
    tiny_model.set_preprocessing(resize="pad")
    pixels = tiny_model.preprocessor([tall])
    assert pixels.shape == (1, 3, 224, 224)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    white, black = (1 - mean) / std, -mean / std
    torch.testing.assert_close(pixels[0, :, :, :40], white.expand(3, 224, 40))  # white bars left and right
    torch.testing.assert_close(pixels[0, :, 60:160, 70:150], black.expand(3, 100, 80))


@pytest.mark.parametrize(
    ("views", "error", "message"),
    [
        ([], ValueError, "no views given"),
        (np.zeros((0, 10, 3), np.uint8), ValueError, "zero-size image"),
        (np.zeros((10, 10, 4), np.uint8), ValueError, r"expected an \(H, W, 3\) RGB image, got shape \(10, 10, 4\)"),
        (np.zeros((10, 10), np.uint8), ValueError, r"got shape \(10, 10\)"),
        (np.zeros((3, 50, 60), np.uint8), ValueError, "channel-first"),
        (np.full((8, 8, 3), np.nan, np.float32), ValueError, "NaN"),
        (np.full((8, 8, 3), 3.0, np.float32), ValueError, r"must lie in \[0, 1\]"),
        (np.zeros((8, 8, 3), np.int64), ValueError, "unsupported image dtype int64"),
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "zero views"),
        (np.zeros((1, 1, 1, 8, 8, 3), np.uint8), ValueError, r"views array must be"),
        ([[np.zeros((8, 8, 3), np.uint8)], []], ValueError, "object 1: empty list of views"),
        (42, TypeError, "cannot read views from int"),
        ([np.zeros((8, 8, 3), np.uint8), 3.5], TypeError, "object 1: cannot read views from float"),
    ],
)
def test_bad_views_give_clear_errors(tiny_model, views, error, message):
    with pytest.raises(error, match=message):
        tiny_model.encode_views(views)


def test_bad_files_give_clear_errors(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        tiny_model.encode_views(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image file"):
        tiny_model.encode_views(text)
    with pytest.raises(ValueError, match="is a directory"):
        tiny_model.encode_views(str(tmp_path))
    good = tmp_path / "good.png"
    Image.fromarray(random_views(1)[0]).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot decode image"):
        tiny_model.encode_views(broken)


def test_bad_tensors_give_clear_errors(tiny_model):
    with pytest.raises(ValueError, match=r"expected preprocessed views of shape \(B, F, 3, 224, 224\)"):
        tiny_model.encode_views(torch.zeros(2, 3, 224, 224))
    for bad in (float("nan"), float("inf"), -float("inf")):  # one bad value among valid ones is enough
        pixels = torch.zeros(2, 2, 3, 224, 224)
        pixels[1, 0, 2, 100, 7] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            tiny_model.encode_views(pixels)
    with pytest.raises(ValueError, match="float tensor"):
        tiny_model.encode_views(torch.zeros(1, 1, 3, 224, 224, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"leaves objects \[1\] with no views"):
        tiny_model.encode_views(torch.zeros(2, 2, 3, 224, 224), view_mask=torch.tensor([[True, True], [False, False]]))
    with pytest.raises(ValueError, match="view_mask must be a bool tensor"):
        tiny_model.encode_views(torch.zeros(2, 2, 3, 224, 224), view_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="view_mask only applies"):
        tiny_model.encode_views(random_views(1), view_mask=torch.ones(1, 1, dtype=torch.bool))


def test_bad_texts_give_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="non-empty"):
        tiny_model.encode_text([])
    with pytest.raises(ValueError, match="text 1 is empty"):
        tiny_model.encode_text(["a mug", "   "])
    with pytest.raises(TypeError, match="text 0 is int"):
        tiny_model.encode_text([3])
