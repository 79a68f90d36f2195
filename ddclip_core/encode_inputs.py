"""The input rules every encoder shares (the PyTorch model and the ONNX Runtime engine): texts to embed,
and preprocessed views with their optional mask of real views."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .images import as_objects


def checked_texts(texts: Any) -> list[str]:
    """A string or a non-empty list of non-blank strings -> the list; anything else a named error."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError("encode_text needs a non-empty string or list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
        if not text.strip():
            raise ValueError(f"text {i} is empty")
    return list(texts)


def view_batches(
    views: Any, num_views: int | None, view_mask: Any, batch_size: int
) -> list[tuple[list[np.ndarray], list[int]]]:
    """Views in any accepted form (not a tensor) -> batches of ``batch_size`` objects, each as (their views
    one after another, views per object): what one forward pass takes."""
    if view_mask is not None:
        raise ValueError("view_mask only applies to preprocessed tensor input")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    objects = as_objects(views, num_views)
    chunks = (objects[start : start + batch_size] for start in range(0, len(objects), batch_size))
    return [([view for obj in chunk for view in obj], [len(obj) for obj in chunk]) for chunk in chunks]


def check_preprocessed(pixels: torch.Tensor, image_size: int) -> None:
    """Preprocessed views must be a float (B, F, 3, S, S) tensor."""
    if pixels.ndim != 5 or pixels.shape[2] != 3 or pixels.shape[-2:] != (image_size, image_size):
        raise ValueError(
            f"expected preprocessed views of shape (B, F, 3, {image_size}, {image_size}), got {tuple(pixels.shape)}"
        )
    if not pixels.is_floating_point():
        raise ValueError(f"preprocessed views must be a float tensor, got {pixels.dtype}; pass uint8 images as numpy")


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity in a float tensor. One reading pass and no temporary as large as the input (which
    ``isfinite(x).all()`` makes, and whose page faults cost more than the encoder's first block at 16 x 12):
    NaN propagates to both extremes, an infinity is one of them."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) and torch.isfinite(high))


def view_counts(view_mask: Any, batch: int, frames: int, device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """A (B, F) bool mask of real views -> (the mask as a tensor on ``device``, views per object >= 1)."""
    view_mask = torch.as_tensor(view_mask, device=device)
    if view_mask.shape != (batch, frames) or view_mask.dtype != torch.bool:
        got = f"{view_mask.dtype} {tuple(view_mask.shape)}"
        raise ValueError(f"view_mask must be a bool tensor of shape {(batch, frames)}, got {got}")
    counts = view_mask.sum(dim=1).tolist()
    if min(counts) < 1:
        raise ValueError(f"view_mask leaves objects {[i for i, c in enumerate(counts) if c < 1]} with no views")
    return view_mask, counts
