"""Export-friendly forms of the encoder's three parts, on the model's own weights (no copies).

The PyTorch forward keeps views packed and decides in Python how to group them (``ViewGroups``); a traced
graph cannot branch like that. Here the cross-view part takes objects side by side instead, padded to the
batch's largest view count, with a (B, Fmax) bool mask of real views: one graph for any batch size, view
count and mix of view counts. Padded views are masked out of every attention as keys and out of the mean,
so an object's embedding does not depend on the padding (the same rule as the packed PyTorch pass).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _attention(attn: nn.MultiheadAttention, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Self-attention of x (S, T, D) with attn's weights; key_mask (S, 1, T, T) bool keeps real keys."""
    s, t, d = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.reshape(s, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    return F.linear(out.transpose(1, 2).reshape(s, t, d), attn.out_proj.weight, attn.out_proj.bias)


def _block(block: nn.Module, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """One open_clip ResidualAttentionBlock (pre-norm attention, then MLP) on (S, T, D)."""
    x = x + block.ls_1(_attention(block.attn, block.ln_1(x), key_mask))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class PerViewGraph(nn.Module):
    """Views (N, 3, S, S), preprocessed -> tokens after the blocks below the threshold (N, L, width)."""

    def __init__(self, visual: nn.Module, layers_threshold: int) -> None:
        super().__init__()
        self.visual, self.layers_threshold = visual, layers_threshold

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype))
        for block in visual.transformer.resblocks[: self.layers_threshold]:
            x = _block(block, x, None)
        return x


class CrossViewGraph(nn.Module):
    """Tokens of objects side by side (B, Fmax, L, width) + real views (B, Fmax) bool -> (B, embed_dim),
    not normalised: the blocks from the threshold on attend over all real views of an object, then
    CLS -> ln_post -> mean over real views -> proj."""

    def __init__(self, visual: nn.Module, layers_threshold: int) -> None:
        super().__init__()
        self.visual, self.layers_threshold = visual, layers_threshold

    def forward(self, tokens: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        batch, frames, length, width = tokens.shape
        keys = view_mask[:, :, None].expand(batch, frames, length).reshape(batch, 1, 1, frames * length)
        # ONNX Runtime's Attention wants the query axis of the mask spelt out, not broadcast.
        keys = keys.expand(batch, 1, frames * length, frames * length)
        x = tokens.reshape(batch, frames * length, width)
        for block in self.visual.transformer.resblocks[self.layers_threshold :]:
            x = _block(block, x, keys)
        cls = self.visual.ln_post(x.reshape(batch, frames, length, width)[:, :, 0])
        real = view_mask[:, :, None]
        pooled = torch.where(real, cls, torch.zeros_like(cls)).sum(1) / real.sum(1).to(cls.dtype)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled


class TextGraph(nn.Module):
    """Token ids (T, context) int64 -> (T, embed_dim) text embeddings, not normalised (open_clip's own pass)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(text)
