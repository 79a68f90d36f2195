"""Frozen CLIP targets: an embedding per view (image_embeddings.h5) and per caption (text_embeddings.h5).

Each view is encoded alone, which with any layers threshold is exactly plain CLIP (cross-view
attention over one view is ordinary self-attention), with CLIP's own preprocessing: the renders are
already 224 x 224, so no crop. Captions come from captions.json; objects without one get their
category (or name) through prompt templates, so every object has at least one text target.
"""

from __future__ import annotations

import logging

import h5py
import numpy as np
import torch
from tqdm import tqdm

from ddclip_core import DuoduoCLIP, PreprocessConfig, Preprocessor
from ddclip_core.atomic import atomic_path
from ddclip_core.labels import TEMPLATE_SETS
from ddclip_core.text_space import encode_probe, text_probe

from .layout import IMAGE_TARGETS, IMAGES, TEXT_TARGETS, DataError, DataFolder

log = logging.getLogger(__name__)


def object_captions(data: DataFolder, templates: str = "simple") -> list[list[str]]:
    """Captions per object: its own, else its category (or name) in every template."""
    if templates not in TEMPLATE_SETS:
        raise ValueError(f"templates must be one of {sorted(TEMPLATE_SETS)}, got {templates!r}")
    out = []
    for obj, captions in zip(data.objects, data.captions, strict=True):
        if captions:
            out.append(captions)
            continue
        label = obj.category or obj.name
        if not label:
            raise DataError(f"object {obj.uid!r} has neither captions nor a category/name to caption it with")
        out.append([template.format(label) for template in TEMPLATE_SETS[templates]])
    return out


@torch.inference_mode()
def image_embeddings(model: DuoduoCLIP, imgs: np.ndarray) -> np.ndarray:
    """(b, V, 3, S, S) uint8 views -> (b, V, D) float32 frozen-CLIP embeddings, each view alone."""
    plain = Preprocessor(PreprocessConfig(crop_size=model.config.preprocess.image_size))
    b, views = imgs.shape[:2]
    pixels = plain.from_uint8(torch.from_numpy(imgs).to(model.device).flatten(0, 1).permute(0, 2, 3, 1))
    embeddings = model.encode_views(pixels.unsqueeze(1), normalize=True)
    return embeddings.reshape(b, views, -1).float().cpu().numpy()


def flat_captions(captions: list[list[str]]) -> tuple[list[str], np.ndarray]:
    """All captions in row order and the offsets of each object's (text_offsets)."""
    flat = [text for texts in captions for text in texts]
    return flat, np.concatenate([[0], np.cumsum([len(texts) for texts in captions])]).astype(np.int64)


def write_text_index(
    dst: h5py.File, flat: list[str], offsets: np.ndarray, weights_id: str, templates: str, text_space: str
) -> None:
    """Everything of text_embeddings.h5 beside text_feat. text_space: ``encode_probe`` of the text
    tower's probe, which the GS encoders trained on these targets carry to say which space they embed into."""
    dst.create_dataset("text_offsets", data=offsets)
    dst.create_dataset("captions", data=np.array(flat, dtype=h5py.string_dtype()))
    dst.attrs["weights_id"] = weights_id
    dst.attrs["templates"] = templates
    dst.attrs["text_space"] = text_space


@torch.inference_mode()
def compute_targets(
    data: DataFolder,
    model: DuoduoCLIP,
    *,
    templates: str = "simple",
    batch_size: int = 32,
    dtype: str = "float16",
    progress: bool = True,
) -> tuple[int, int]:
    """Write image_embeddings.h5 and text_embeddings.h5 into the data folder.

    Returns (number of view embeddings, number of caption embeddings).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dim, views = model.embed_dim, data.num_views
    # Captions first: bad templates or an object with nothing to caption must stop the run before it
    # spends its time on the images (and before it replaces a good image_embeddings.h5).
    flat, offsets = flat_captions(object_captions(data, templates))
    images, out = data.path(IMAGES), data.path(IMAGE_TARGETS)
    with atomic_path(out) as tmp, h5py.File(images, "r") as src, h5py.File(tmp, "w") as dst:
        feats = dst.create_dataset("img_feat", shape=(data.num_objects, views, dim), dtype=dtype)
        for start in tqdm(range(0, data.num_objects, batch_size), desc="image targets", disable=not progress):
            embeddings = image_embeddings(model, src["imgs"][start : start + batch_size])
            feats[start : start + len(embeddings)] = embeddings.astype(dtype)
        dst.attrs["weights_id"] = model.weights_id

    text = model.encode_text(flat, batch_size=256).cpu().numpy().astype(dtype)
    with atomic_path(data.path(TEXT_TARGETS)) as tmp, h5py.File(tmp, "w") as dst:
        dst.create_dataset("text_feat", data=text)
        write_text_index(dst, flat, offsets, model.weights_id, templates, encode_probe(text_probe(model)))
    log.info("targets: %d views, %d captions, weights %s", data.num_objects * views, len(flat), model.weights_id)
    return data.num_objects * views, len(flat)
