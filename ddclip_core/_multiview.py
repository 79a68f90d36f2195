"""The multi-view forward pass of an open_clip VisionTransformer.

Views are kept packed, (N, L, D) for the N real views of all objects, and nothing runs on padding:
per-view work (patch embedding, projections, MLPs, within-view attention) runs on the real views, and
cross-view attention on the objects of each view count together (``_view_groups``), so a batch of
objects with different view counts gives the same result as running each alone.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ._prepacked import PrepackedVisual, _hooked
from ._view_groups import ViewGroups, attend

# The pre-packed CPU path runs at most this many views at a time (~2400 tokens): their activations then
# stay in the caches between matmuls. 16 objects x 12 views ran 1.2x faster in chunks of 48 views than
# in one pass on the development machine (2 cores, AVX-512); results are the same either way.
CPU_CHUNK_VIEWS = 48


def embed_views(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1 + patches, width): patch embedding, CLS, positions, ln_pre (as CLIP)."""
    x = visual.conv1(pixels)
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(x)


def warn_unrun_hooks(visual: nn.Module) -> None:
    """The multi-view pass calls the tower's parts (conv1, ln_pre, each block's ln_1, ln_2 and mlp, ln_post),
    not the tower, its transformer, its blocks or their attention: hooks there would never run."""
    blocks = visual.transformer.resblocks
    modules = {"visual": visual, "visual.transformer": visual.transformer}
    for i, block in enumerate(blocks):
        modules |= {f"resblocks[{i}]": block, f"resblocks[{i}].attn": block.attn}
        modules[f"resblocks[{i}].attn.out_proj"] = block.attn.out_proj
    unrun = [name for name, module in modules.items() if module._forward_hooks or module._forward_pre_hooks]
    if unrun:
        warnings.warn(
            f"forward hooks on {', '.join(unrun[:3])} do not run: ddclip's multi-view pass runs the attention "
            "itself (views attend across each other); hook ln_1, ln_2, mlp, ln_pre or ln_post instead",
            stacklevel=3,
        )


def _attention(
    attn: nn.MultiheadAttention, x: torch.Tensor, groups: ViewGroups | None, query_every: int = 1
) -> torch.Tensor:
    """Self-attention of packed views x (N, L, D) with attn's weights, through PyTorch SDPA (flash where it
    can): within each view (groups None) or across each object's views. query_every=L: only each view's
    CLS asks, -> (N, 1, D)."""
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    sdpa = F.scaled_dot_product_attention
    if groups is None:
        out = attend(qkv, attn.num_heads, sdpa, None, query_every)
    else:
        out = groups.attend(qkv, attn.num_heads, sdpa, query_every)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def run_block(block: nn.Module, x: torch.Tensor, groups: ViewGroups | None, cls_only: bool = False) -> torch.Tensor:
    """One open_clip ResidualAttentionBlock on packed views (N, L, D).

    groups=None: attention within each view (plain CLIP). Otherwise attention runs over all
    tokens of all views of each object jointly; the MLP is per token either way. cls_only: only the
    CLS token's output, (N, 1, D) (the last block: nothing reads the other tokens' outputs).
    """
    h = _attention(block.attn, block.ln_1(x), groups, x.shape[1] if cls_only else 1)
    x = x[:, :1] + block.ls_1(h) if cls_only else x + block.ls_1(h)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def per_view_tokens(
    visual: nn.Module, pixels: torch.Tensor, layers_threshold: int, prepacked: PrepackedVisual | None = None
) -> torch.Tensor:
    """Packed views (N, 3, H, W) -> their tokens after the blocks below the threshold, (N, L, D).

    These blocks see one view at a time, so a view's tokens never change: they can be kept and reused
    when the object's other views change (``view_cache``). ``prepacked``: the same weights pre-packed for
    inference on CPU (``_prepacked``), used instead of the modules.
    """
    if prepacked is None:
        warn_unrun_hooks(visual)
    if prepacked is not None:
        if len(pixels) > CPU_CHUNK_VIEWS:
            parts = pixels.split(CPU_CHUNK_VIEWS)
            return torch.cat([per_view_tokens(visual, part, layers_threshold, prepacked) for part in parts])
        x = prepacked.embed(pixels)
        for block in prepacked.blocks[:layers_threshold]:
            x = block(x)
        return x
    x = embed_views(visual, pixels)
    for block in visual.transformer.resblocks[:layers_threshold]:
        x = run_block(block, x, None)
    return x


def cross_view_embeddings(
    visual: nn.Module,
    tokens: torch.Tensor,
    view_counts: list[int],
    layers_threshold: int,
    prepacked: PrepackedVisual | None = None,
) -> torch.Tensor:
    """Per-view tokens (N, L, D) of len(view_counts) objects -> (B, embed_dim), not normalised: the blocks
    from the threshold on attend across the views of one object; then CLS -> ln_post -> mean -> proj."""
    if tokens.shape[0] != sum(view_counts):
        raise ValueError(f"{tokens.shape[0]} views given but view counts {view_counts} sum to {sum(view_counts)}")
    if prepacked is not None and len(tokens) > CPU_CHUNK_VIEWS and len(view_counts) > 1:
        return torch.cat(
            [
                cross_view_embeddings(visual, tokens[first:last], view_counts[start:stop], layers_threshold, prepacked)
                for start, stop, first, last in object_chunks(view_counts, CPU_CHUNK_VIEWS)
            ]
        )
    if prepacked is None:
        warn_unrun_hooks(visual)
    groups = ViewGroups(view_counts, tokens.device)
    x = tokens
    # Only each view's CLS leaves the tower: the last block computes its output alone (its attention
    # still reads every token), ~6 % of the tower's FLOPs less. Training and hooks see every token (the
    # packed weights are only used without either).
    last = len(visual.transformer.resblocks) - 1 - layers_threshold
    cls_only = not (torch.is_grad_enabled() or _hooked(visual))
    if prepacked is not None:
        x = x.float()
        for index, block in enumerate(prepacked.blocks[layers_threshold:]):
            x = block(x, groups, cls_only=cls_only and index == last)
    else:
        for index, block in enumerate(visual.transformer.resblocks[layers_threshold:]):
            x = run_block(block, x, groups, cls_only=cls_only and index == last)
    cls = visual.ln_post(x[:, 0])
    pooled = groups.mean(cls)
    return pooled @ visual.proj if visual.proj is not None else pooled


def encode_packed_views(
    visual: nn.Module,
    pixels: torch.Tensor,
    view_counts: list[int],
    layers_threshold: int,
    prepacked: PrepackedVisual | None = None,
) -> torch.Tensor:
    """Packed views (N, 3, H, W) of len(view_counts) objects -> (B, embed_dim), not normalised."""
    if pixels.shape[0] != sum(view_counts):
        raise ValueError(f"{pixels.shape[0]} views given but view counts {view_counts} sum to {sum(view_counts)}")
    ViewGroups(view_counts, pixels.device)  # checks the counts before any work
    if prepacked is not None and len(pixels) > CPU_CHUNK_VIEWS and len(view_counts) > 1:
        # both halves chunk by chunk, so that a chunk's tokens are still in cache for its second half
        return torch.cat(
            [
                encode_packed_views(visual, pixels[first:last], view_counts[start:stop], layers_threshold, prepacked)
                for start, stop, first, last in object_chunks(view_counts, CPU_CHUNK_VIEWS)
            ]
        )
    tokens = per_view_tokens(visual, pixels, layers_threshold, prepacked)
    return cross_view_embeddings(visual, tokens, view_counts, layers_threshold, prepacked)


def object_chunks(view_counts: list[int], max_views: int) -> list[tuple[int, int, int, int]]:
    """Consecutive objects with at most ``max_views`` views together (an object with more stands alone):
    (first object, end object, first view, end view) of each chunk."""
    chunks, start, first, views = [], 0, 0, 0
    for index, count in enumerate(view_counts):
        if views and views + count > max_views:
            chunks.append((start, index, first, first + views))
            start, first, views = index, first + views, 0
        views += count
    chunks.append((start, len(view_counts), first, first + views))
    return chunks
