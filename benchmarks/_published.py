"""The published Duoduo CLIP image tower, for side-by-side timing and agreement in one process.

Point ``--published`` at a checkout of github.com/3dlg-hcvc/DuoduoCLIP made outside this repository
(nothing of it is vendored here). Only its ``src/custom_clip/transformer.py`` is loaded: its package
``__init__`` and ``model.py`` import names that current open_clip no longer has; the transformer only
needs two helpers that open_clip moved into submodules, put back where it looks for them. The
published ``VisionTransformer`` gets our weights (its state dict keys are open_clip's, as ours are),
so both run the same network on the same input.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def load_published_visual(checkout: str | Path, ours: nn.Module) -> nn.Module:
    """The published multi-view ViT built with the shape of ``ours`` (an open_clip VisionTransformer)
    and loaded with its weights, in eval mode on its device."""
    folder = Path(checkout) / "src" / "custom_clip"
    if not (folder / "transformer.py").is_file():
        raise SystemExit(f"--published {checkout}: no src/custom_clip/transformer.py (a DuoduoCLIP checkout?)")
    import open_clip
    from open_clip.pos_embed import get_2d_sincos_pos_embed
    from open_clip.utils import to_2tuple

    open_clip.to_2tuple = getattr(open_clip, "to_2tuple", to_2tuple)
    open_clip.get_2d_sincos_pos_embed = getattr(open_clip, "get_2d_sincos_pos_embed", get_2d_sincos_pos_embed)
    package = types.ModuleType("published_custom_clip")
    package.__path__ = [str(folder)]  # a namespace for the relative imports, without running __init__.py
    sys.modules["published_custom_clip"] = package
    transformer = importlib.import_module("published_custom_clip.transformer")
    blocks = ours.transformer.resblocks
    width = ours.conv1.out_channels
    published = transformer.VisionTransformer(
        image_size=ours.image_size[0] if isinstance(ours.image_size, tuple) else ours.image_size,
        patch_size=ours.conv1.kernel_size[0],
        width=width,
        layers=len(blocks),
        heads=blocks[0].attn.num_heads,
        mlp_ratio=blocks[0].mlp.c_fc.out_features / width,
        output_dim=ours.proj.shape[1],
        is_multi_view=True,
    )
    published.load_state_dict(ours.state_dict(), strict=True)
    return published.to(ours.proj.device).eval()


def published_encoder(published: nn.Module, layers_threshold: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """pixels (B, F, 3, S, S) -> (B, embed_dim), the way the published model calls its tower: per-block
    frame counts, 1 below the threshold and F from it on, and F once more for the mean over views."""

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        frames = pixels.shape[1]
        layers = len(published.transformer.resblocks)
        num_frames = [1] * layers_threshold + [frames] * (layers - layers_threshold) + [frames]
        with torch.inference_mode():
            return published(pixels.flatten(0, 1), num_frames=num_frames)

    return encode
