"""Inference on CPU with the image tower's weights pre-packed for oneDNN.

PyTorch's fp32 ``F.linear`` on CPU calls MKL, which packs the weight matrix again on every call and,
on AMD CPUs, does not take its AVX-512 kernels; at the small row counts of one object (50 tokens per
view) that doubles the time of the matmuls, which are ~95 % of the encoder's FLOPs. Packing the
weights once into oneDNN's blocked layout (what ``torch.compile`` does for frozen CPU graphs, through
the same ``mkldnn`` ops) removes that, and lets oneDNN fuse GELU into the MLP's first matmul and the
residual add into the second. The patch embedding (a stride-32 convolution whose oneDNN kernel is slow
on one image) becomes a reshape and one packed matmul. At hundreds of rows MKL's own packing costs little
and on some CPUs (AVX2 EPYC) its GEMMs beat oneDNN's, so each fp32 layer times both once per row bucket
and keeps the faster (``_Linear._mkl_wins``).

Only the inference API uses this (``encode_views``, ``view_tokens``, ``embed_view_tokens``): training
and ``forward`` keep the plain modules and autograd. Numbers agree with the plain path to fp32 rounding
(the order of the sums differs). ``precision="bf16"`` packs bf16 weights and keeps the residual stream
and LayerNorms in fp32, as autocast does. ``DDCLIP_CPU_PREPACK=0`` turns the path off.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from ._view_groups import attend
from .identity import submodules, tensors_state, weights_state

_mkldnn = torch.ops.mkldnn
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def packing_available(device: torch.device, precision: str) -> bool:
    """Whether the packed path applies to this device and precision (CPU, oneDNN, fp32 or bf16)."""
    if device.type != "cpu" or precision not in _DTYPES or os.environ.get("DDCLIP_CPU_PREPACK", "1") == "0":
        return False
    if not (torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()):
        return False
    return precision == "fp32" or bool(_mkldnn._is_mkldnn_bf16_supported())


@dataclass
class _Linear:
    weight: torch.Tensor  # oneDNN-packed (out, in)
    bias: torch.Tensor | None
    parts: dict[int, int] | None = None  # 16-bit: per row count, in how many row pieces it runs fastest
    plain: torch.Tensor | None = None  # fp32: the module's own (out, in) weight, for MKL
    mkl: dict[tuple[int, str], bool] | None = None  # fp32: per (row bucket, op), whether MKL runs it faster

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> _Linear:
        packed = _mkldnn._reorder_linear_weight(weight.detach().to(dtype).contiguous(), None)
        bias = None if bias is None else bias.detach().to(dtype).contiguous()
        shared = _CHOICES.setdefault((dtype, tuple(weight.shape)), {})
        if dtype == torch.float32:
            return cls(packed, bias, plain=weight.detach(), mkl=shared)
        return cls(packed, bias, shared)

    def __call__(self, x: torch.Tensor, post_op: str = "none") -> torch.Tensor:
        # post_op "gelu" fuses exact (erf) GELU, as nn.GELU() computes it
        rows = x.shape[0]
        if self.parts is None:
            return self._mkl(x, post_op) if self._mkl_wins(x, post_op) else self._run(x, post_op)
        if rows < _SPLIT_MIN_ROWS:
            return self._run(x, post_op)
        parts = self.parts.get(rows)
        if parts is None:  # measured once per row count, while there is room to remember it
            parts = self._measure_parts(x, post_op) if len(self.parts) < _SPLIT_MAX_ENTRIES else 1
        return self._run(x, post_op) if parts == 1 else torch.cat([self._run(p, post_op) for p in x.chunk(parts)])

    def _run(self, x: torch.Tensor, post_op: str) -> torch.Tensor:
        return _mkldnn._linear_pointwise(x, self.weight, self.bias, post_op, [], "none" if post_op == "gelu" else "")

    def _mkl(self, x: torch.Tensor, post_op: str, residual: torch.Tensor | None = None) -> torch.Tensor:
        out = F.linear(x, self.plain, self.bias)
        if post_op == "gelu":
            return F.gelu(out)
        return out if residual is None else out.add_(residual)

    def _mkl_wins(self, x: torch.Tensor, op: str, residual: torch.Tensor | None = None) -> bool:
        """Whether MKL's fp32 GEMM beats the packed oneDNN one at this many rows, measured once per row
        bucket (the next power of two) and op. oneDNN wins at one object's 50-200 rows everywhere; at
        600+ rows MKL wins on some CPUs (AVX2 EPYC: the packed tower at 12 views took 1.18x the plain
        one's time) and loses on others, so neither can be fixed in advance."""
        key = (1 << (x.shape[0] - 1).bit_length(), op)
        wins = self.mkl.get(key)
        if wins is None and len(self.mkl) >= _SPLIT_MAX_ENTRIES:
            return False  # no room to remember one more: oneDNN, unmeasured
        if wins is None:
            if residual is None:
                runs = (lambda: self._mkl(x, op), lambda: self._run(x, op))
            else:
                runs = (lambda: self._mkl(x, "none", residual), lambda: self._run_add(x, residual))
            mkl, onednn = _best_times(*runs)
            wins = mkl < 0.95 * onednn  # a clear win only: the two differ in the last bit of some sums
            self.mkl[key] = wins
        return wins

    def _measure_parts(self, x: torch.Tensor, post_op: str) -> int:
        """In how many row pieces (1, 2 or 4) this row count runs fastest, measured once. oneDNN's bf16
        AMX kernels for 768 outputs run at half their rate at some row counts (500-1200 rows for c_proj,
        400-800 for out_proj, on Xeon with 2 cores) and at full rate on a half or a quarter of them;
        elsewhere one call wins. Kept per row count."""
        counts = [1, 2, 4] if x.shape[0] >= 2 * _SPLIT_MIN_ROWS else [1, 2]
        times = _best_times(*[lambda n=n: [self._run(p, post_op) for p in x.chunk(n)] for n in counts])
        best = min(range(1, len(counts)), key=times.__getitem__)
        # a clear win only: the pieces differ from one call in the last bit of some sums
        parts = counts[best] if times[best] < 0.85 * times[0] else 1
        self.parts[x.shape[0]] = parts
        return parts

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """linear(x) + residual (fp32): in one oneDNN call, or MKL's GEMM and an add where that is faster."""
        if self._mkl_wins(x, "add", residual):
            return self._mkl(x, "none", residual)
        return self._run_add(x, residual)

    def _run_add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return _mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")


_SPLIT_MIN_ROWS = 256  # below, one call always won where measured
_SPLIT_MAX_ENTRIES = 512  # row counts measured and remembered per layer shape; others run in one call


# Kernel decisions per (dtype, weight shape), shared by every layer of that shape in the process: measured
# once, and two models with the same weights (a checkpoint and its export) give the same bits.
# bf16: row count -> pieces; fp32: (row bucket, op) -> whether MKL wins.
_CHOICES: dict[tuple[torch.dtype, tuple[int, ...]], dict] = {}


def _best_times(*runs: Any, rounds: int = 3) -> list[float]:
    """The best time of each run, in turns (a, b, a, b, ...) so that load changes hit them alike."""
    for run in runs:
        run()  # oneDNN builds its kernel for a new shape on the first call
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def _matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None
) -> torch.Tensor:
    """Attention as two 16-bit matmuls and a softmax, a few sequences at a time (scores of ~4 MB, in
    cache). PyTorch's fused CPU kernel has no bf16 matrix-unit path: it runs bf16 at fp32's speed, and
    this at about twice that. attn_mask: bool, True where a key may be attended (broadcast to scores)."""
    s, heads, t, d = q.shape
    per = max(1, (4 << 20) // (heads * t * k.shape[2] * q.element_size()))
    out = torch.empty_like(q)
    for start in range(0, s, per):
        part = slice(start, start + per)
        scores = torch.matmul(q[part] * d**-0.5, k[part].transpose(-1, -2))
        if attn_mask is not None:  # one mask for every sequence: the text tower's causal (T, T)
            scores.masked_fill_(~attn_mask, float("-inf"))
        out[part] = torch.matmul(scores.softmax(-1), v[part])
    return out


def _half_attention() -> Any:
    """The faster 16-bit attention on this CPU. With AMX tiles, PyTorch's fused (flash) kernel runs bf16 on
    them and beats two matmuls and a softmax 1.3-1.45x (Xeon, 2 cores); without, it runs bf16 at fp32's
    speed and ``_matmul_attention`` is ~1.3x faster (EPYC, AVX512-BF16)."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return F.scaled_dot_product_attention if amx() else _matmul_attention


def _norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


class _Block:
    """One open_clip ResidualAttentionBlock with packed weights."""

    def __init__(self, block: nn.Module, dtype: torch.dtype) -> None:
        self.ln_1, self.ln_2 = block.ln_1, block.ln_2
        self.heads = block.attn.num_heads
        self.dtype = dtype
        attn, mlp = block.attn, block.mlp
        self.qkv = _Linear.pack(attn.in_proj_weight, attn.in_proj_bias, dtype)
        self.out = _Linear.pack(attn.out_proj.weight, attn.out_proj.bias, dtype)
        self.fc = _Linear.pack(mlp.c_fc.weight, mlp.c_fc.bias, dtype)
        self.proj = _Linear.pack(mlp.c_proj.weight, mlp.c_proj.bias, dtype)
        self.fused_gelu = type(block.mlp.gelu) is nn.GELU and block.mlp.gelu.approximate == "none"
        self.activation = block.mlp.gelu
        self.attention = F.scaled_dot_product_attention if dtype == torch.float32 else _half_attention()

    def __call__(
        self, x: torch.Tensor, groups=None, mask: torch.Tensor | None = None, cls_only: bool = False
    ) -> torch.Tensor:
        """x (N, L, D) float32 packed views; groups as in ``_multiview.run_block``; or a boolean
        (L, L) attention mask within each sequence (True: may attend), as the text tower's causal one.
        cls_only: only the first token's output, (N, 1, D), from attention over all tokens."""
        n, length, d = x.shape
        h = _norm(x, self.ln_1).to(self.dtype)
        qkv = self.qkv(h.reshape(n * length, d)).view(n, length, 3 * d)
        step = length if cls_only else 1
        if groups is not None:
            h = groups.attend(qkv, self.heads, self.attention, step)
        else:
            h = attend(qkv, self.heads, self.attention, mask, step)
        out_length = length // step
        h = h.reshape(n * out_length, d)
        x = (x[:, :1] if cls_only else x).reshape(n * out_length, d)
        x = self._residual(self.out, h, x)
        h = _norm(x, self.ln_2).to(self.dtype)
        h = self.fc(h, "gelu") if self.fused_gelu else self.activation(self.fc(h))
        return self._residual(self.proj, h, x).view(n, out_length, d)

    def _residual(self, linear: _Linear, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float32:
            return linear.add(h, x)
        return x + linear(h)  # bf16 matmul, fp32 residual stream


def _plain_blocks(blocks: nn.ModuleList) -> bool:
    """Blocks as ``_Block`` computes them: no LayerScale, no cross-attention, LayerNorms."""
    for block in blocks:
        if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
            return False
        if hasattr(block, "ln_1_kv") or not isinstance(block.attn, nn.MultiheadAttention):
            return False
        if not (isinstance(block.ln_1, nn.LayerNorm) and isinstance(block.ln_2, nn.LayerNorm)):
            return False
    return True


def _hooked(module: nn.Module) -> bool:
    """Forward hooks on the module or below. Hooks on every module (``register_module_forward_hook``) are
    process-wide instruments (profilers, FlopCounterMode, which measures this path): not counted."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in submodules(module))


class _Packed:
    """How ``_tower_cache.TowerCache`` makes and keeps a packed tower."""

    available = staticmethod(packing_available)

    @classmethod
    def build(cls, module: nn.Module, precision: str) -> Any:
        return cls(module, precision)


class PrepackedVisual(_Packed):
    """The image tower of an open_clip VisionTransformer with oneDNN-packed weights, for inference."""

    def __init__(self, visual: nn.Module, precision: str) -> None:
        dtype = _DTYPES[precision]
        self.visual = visual
        self.dtype = dtype
        conv = visual.conv1
        self.patch = conv.kernel_size[0]
        self.patch_embed = _Linear.pack(conv.weight.flatten(1), conv.bias, dtype)
        self.blocks = [_Block(block, dtype) for block in visual.transformer.resblocks]

    @staticmethod
    def supports(visual: nn.Module) -> bool:
        """The architecture the packed path reproduces exactly; anything else uses the plain path. So do
        towers with forward hooks (feature extraction, tests): hooks only run when the modules do."""
        if _hooked(visual):
            return False
        conv = visual.conv1
        if conv.kernel_size != conv.stride or conv.padding not in ((0, 0), "valid") or conv.groups != 1:
            return False
        return _plain_blocks(visual.transformer.resblocks) and isinstance(visual.ln_pre, nn.LayerNorm)

    @staticmethod
    def state(visual: nn.Module) -> tuple:
        return weights_state(visual)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 1 + patches, width) float32: patches as one matmul, CLS, positions, ln_pre."""
        n, c, height, width = pixels.shape
        p = self.patch
        gh, gw = height // p, width // p
        patches = pixels.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(n * gh * gw, c * p * p)
        x = self.patch_embed(patches.to(self.dtype)).float().view(n, gh * gw, -1)
        visual = self.visual
        cls = visual.class_embedding.float().expand(n, 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.float()
        return _norm(x, visual.ln_pre)


class PrepackedText(_Packed):
    """The text tower of an open_clip CLIP with oneDNN-packed weights, for inference (``encode_text``)."""

    def __init__(self, clip: nn.Module, precision: str) -> None:
        self.clip = clip
        self.blocks = [_Block(block, _DTYPES[precision]) for block in clip.transformer.resblocks]
        self.mask = clip.attn_mask == 0  # causal: 0 where a token may attend, -inf elsewhere

    @staticmethod
    def supports(clip: nn.Module) -> bool:
        if not all(hasattr(clip, name) for name in ("token_embedding", "transformer", "ln_final", "attn_mask")):
            return False  # a CustomTextCLIP (HF text towers) keeps its own path
        mask = clip.attn_mask
        if mask is None or not bool(((mask == 0) | (mask == float("-inf"))).all()):
            return False
        hooked = _hooked(clip.transformer) or _hooked(clip.ln_final)  # (ln_final runs as a function here)
        return not hooked and _plain_blocks(clip.transformer.resblocks)

    @staticmethod
    def state(clip: nn.Module) -> tuple:
        parts = tuple(weights_state(getattr(clip, name)) for name in ("token_embedding", "transformer", "ln_final"))
        projection = clip.text_projection
        if isinstance(projection, nn.Module):
            projection = weights_state(projection)
        elif projection is not None:
            projection = tensors_state([projection])
        return (*parts, tensors_state([clip.positional_embedding, clip.attn_mask]), projection)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, context) token ids -> (B, embed_dim) float32, not normalised (as ``CLIP.encode_text``)."""
        clip = self.clip
        x = clip.token_embedding(tokens).float() + clip.positional_embedding.float()
        mask = self.mask[: x.shape[1], : x.shape[1]]
        for block in self.blocks:
            x = block(x, mask=mask)
        x = text_global_pool(_norm(x, clip.ln_final), tokens, clip.text_pool_type, getattr(clip, "text_eos_id", None))
        projection = clip.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection
