"""DuoduoCLIP: OpenCLIP's image tower with cross-view attention in its upper blocks.

The weights are a plain open_clip ``CLIP`` held as ``self.clip``, so state dict keys are
open_clip's own (the published checkpoint prefixes them with ``duoduoclip.``). Only the
forward pass of the image tower differs: see ``_multiview``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ._half_weights import HalfTower
from ._multiview import cross_view_embeddings, encode_packed_views, per_view_tokens
from ._prepacked import PrepackedText, PrepackedVisual
from ._runtime import Precision, autocast, check_precision
from ._tokenizer import tokenizer_for
from ._tower_cache import TowerCache
from .config import DuoduoConfig
from .encode_inputs import all_finite, check_preprocessed, checked_texts, view_batches, view_counts
from .identity import WeightsIdentity, count_fused_optimizer_steps, weights_state
from .precision import choose_precision
from .preprocess import CropMode, Preprocessor, ResizeMode

_ATTN_PARAM = re.compile(r"^clip\.visual\.transformer\.resblocks\.(\d+)\.attn\.")


class DuoduoCLIP(nn.Module):
    """Multi-view shape encoder and CLIP text encoder sharing one embedding space.

    Build it with ``ddclip_core.load_model``. ``encode_views`` and ``encode_text`` are the
    inference API (L2-normalised by default); ``forward`` is the raw differentiable network.
    """

    def __init__(self, config: DuoduoConfig) -> None:
        super().__init__()
        count_fused_optimizer_steps()  # weights_id and the derived caches must see every training step
        self.config = config
        cfg = dict(config.clip_cfg)
        cfg.pop("cast_dtype", None)
        self.clip = open_clip.CLIP(**cfg)
        self.precision: Precision = "fp32"
        self.precision_reason = "default"  # why this precision: "requested", or what "auto" measured
        self.preprocessor = Preprocessor(config.preprocess)
        self.weights_source: str | None = None
        self._aliases: tuple[tuple[str, ...], str] = ((), "")  # (aliases, the weights id they name)
        self._tokenizer: Any = None
        self._weights_id: tuple[tuple, str] | None = None  # (the weights' state, its id)
        self._prepacked = TowerCache(PrepackedVisual)
        self._prepacked_text = TowerCache(PrepackedText)
        self._half_visual = TowerCache(HalfTower)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.clip.visual.proj.device

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def num_blocks(self) -> int:
        return self.config.num_blocks

    @property
    def layers_threshold(self) -> int:
        return self.config.layers_threshold

    @property
    def weights_id(self) -> str:
        """Fingerprint of the weights and threshold: embeddings are comparable iff these match."""
        state = (self.layers_threshold, weights_state(self.clip))  # the threshold: a config field, settable
        if self._weights_id is None or self._weights_id[0] != state:
            digest = hashlib.sha256(f"{self.config.arch}|{self.layers_threshold}".encode())
            for name, tensor in sorted(self.clip.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._weights_id = (state, f"{self.config.arch}-lt{self.layers_threshold}-{digest.hexdigest()[:16]}")
        return self._weights_id[1]

    @property
    def weights_aliases(self) -> tuple[str, ...]:
        """Other names of these weights: a published checkpoint is also "published:<file stem>", the id
        recorded by banks built from the released embeddings. Gone once the weights change."""
        aliases, named = self._aliases
        return aliases if aliases and named == self.weights_id else ()  # a device move keeps them

    @weights_aliases.setter
    def weights_aliases(self, aliases: tuple[str, ...]) -> None:
        self._aliases = (tuple(aliases), self.weights_id if aliases else "")

    @property
    def identity(self) -> WeightsIdentity:
        """The weights id with its aliases: what banks, memories and enrolled names are checked against."""
        return WeightsIdentity(self.weights_id, tuple(self.weights_aliases))

    def set_precision(self, precision: str) -> DuoduoCLIP:
        """ "fp32", "fp16", "bf16", or "auto": the fastest of them whose embeddings match fp32 (cosine >=
        0.999), measured once on this device with real views (``ddclip_core.precision``)."""
        if check_precision(precision, allow_auto=True) == "auto":
            choice = choose_precision(self)
            self.precision, self.precision_reason = check_precision(choice.precision), f"auto: {choice.reason}"
        else:
            self.precision, self.precision_reason = check_precision(precision), "requested"
        return self

    def set_preprocessing(self, crop: CropMode = "center", resize: ResizeMode = "stretch") -> DuoduoCLIP:
        """crop='random' reproduces the published (non-deterministic) inference crop."""
        self.preprocessor = Preprocessor(self.config.preprocess, crop=crop, resize=resize)
        return self

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._weights_id = None
        self._aliases = ((), "")  # other weights now, whatever file they came from
        return super().load_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------ network
    def forward(self, pixels: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Preprocessed views (B, F, 3, S, S) -> (B, embed_dim), not normalised, differentiable.

        view_mask (B, F) bool marks real views in a padded batch; each object needs >= 1.
        """
        return self._forward(pixels, view_mask, self.clip.visual, None)

    def _forward(
        self,
        pixels: torch.Tensor,
        view_mask: torch.Tensor | None,
        visual: nn.Module,
        prepacked: PrepackedVisual | None,
    ) -> torch.Tensor:
        check_preprocessed(pixels, self.config.preprocess.image_size)
        batch, frames = pixels.shape[:2]
        if view_mask is None:
            return encode_packed_views(visual, pixels.flatten(0, 1), [frames] * batch, self.layers_threshold, prepacked)
        view_mask, counts = view_counts(view_mask, batch, frames, pixels.device)
        return encode_packed_views(visual, pixels[view_mask], counts, self.layers_threshold, prepacked)

    # ------------------------------------------------------------------ inference API
    def encode_views(
        self,
        views: Any,
        *,
        normalize: bool = True,
        num_views: int | None = None,
        view_mask: torch.Tensor | None = None,
        batch_size: int = 32,
    ) -> torch.Tensor:
        """Views of one or more objects -> (B, embed_dim) shape embeddings (float32, model device).

        views: (H, W, 3) or (F, H, W, 3) uint8 array (one object), (B, F, H, W, 3) array, a path or
            PIL image, a flat list of those (one object's views), or a list of objects each with its
            own number of views (one forward pass per ``batch_size`` objects). Float arrays
            are read as RGB in [0, 1]. A float torch tensor (B, F, 3, S, S) is taken as already
            preprocessed, with an optional (B, F) bool ``view_mask``, and keeps autograd.
        num_views: split every image into this many views stacked vertically (a packed strip).
        """
        if isinstance(views, torch.Tensor):
            return self._encode_tensor(views, view_mask, normalize)
        batches = view_batches(views, num_views, view_mask, batch_size)
        out = []
        prepacked, visual = self._inference_weights()
        with torch.inference_mode(), self._autocast(prepacked):
            for flat, counts in batches:
                pixels = self.preprocessor(flat, self.device)
                out.append(encode_packed_views(visual, pixels, counts, self.layers_threshold, prepacked))
        return self._finish(torch.cat(out), normalize)

    def view_tokens(self, views: list[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 views (of any objects) -> their tokens after the per-view blocks, (N, L, width).

        The first half of ``encode_views``, preprocessing included; ``embed_view_tokens`` is the second.
        A view's tokens do not depend on the object's other views, so they can be kept (``ViewTokenCache``).
        """
        prepacked, visual = self._inference_weights()
        with torch.inference_mode(), self._autocast(prepacked):
            pixels = self.preprocessor(views, self.device)
            return per_view_tokens(visual, pixels, self.layers_threshold, prepacked)

    def view_tokens_state(self) -> tuple:
        """What ``view_tokens`` depends on besides the views: the image tower's weights (replaced, moved or
        changed in place), where it is cut (``layers_threshold``), the precision and the preprocessing.
        Kept tokens hold while it stays equal."""
        visual = weights_state(self.clip.visual)
        return (visual, self.layers_threshold, str(self.device), self.precision, self.preprocessor.key)

    def embed_view_tokens(
        self, tokens: torch.Tensor, view_counts: list[int], *, normalize: bool = True
    ) -> torch.Tensor:
        """Tokens of ``view_tokens`` (N, L, width), packed object after object -> (B, embed_dim)."""
        tokens = tokens.to(self.device)
        prepacked, visual = self._inference_weights()
        with torch.inference_mode(), self._autocast(prepacked):
            embeddings = cross_view_embeddings(visual, tokens, view_counts, self.layers_threshold, prepacked)
        return self._finish(embeddings, normalize)

    def _check_weights(self) -> None:
        """The weights stay fp32 (16 bit runs from them: ``set_precision``); ``model.half()`` and the like
        would fail deep inside a kernel with a message about mixed types."""
        dtype = self.clip.visual.conv1.weight.dtype
        if dtype != torch.float32:
            raise ValueError(
                f"the model's weights are {dtype}: keep them float32 and run in 16 bit with "
                "set_precision('bf16' or 'fp16') (or precision= when loading); model.float() restores them"
            )

    def _inference_weights(self) -> tuple[PrepackedVisual | None, nn.Module]:
        """The image tower pre-packed for oneDNN where that applies (CPU, fp32/bf16; see ``_prepacked``),
        and the tower's modules to run otherwise: in 16 bit, a copy with 16-bit weights (``_half_weights``)."""
        self._check_weights()
        prepacked = self._prepacked.get(self.clip.visual, self.device, self.precision)
        half = self._half_visual.get(self.clip.visual, self.device, self.precision)  # where packing is not
        return prepacked, self.clip.visual if half is None else half

    def _autocast(self, prepacked: PrepackedVisual | None) -> Any:
        # pre-packed weights already carry the precision; autocast would only add casts
        return contextlib.nullcontext() if prepacked is not None else autocast(self.device, self.precision)

    def _encode_tensor(self, pixels: torch.Tensor, view_mask: torch.Tensor | None, normalize: bool) -> torch.Tensor:
        check_preprocessed(pixels, self.config.preprocess.image_size)  # a float tensor: before the cast below
        if not all_finite(pixels):
            raise ValueError("preprocessed views contain NaN or infinity")
        pixels = pixels.to(self.device, torch.float32)  # float64 or 16-bit input: what the weights take
        view_mask = None if view_mask is None else torch.as_tensor(view_mask, device=self.device)
        if torch.is_grad_enabled():  # keep autograd: the modules themselves
            self._check_weights()
            with autocast(self.device, self.precision):
                return self._finish(self(pixels, view_mask), normalize)
        prepacked, visual = self._inference_weights()
        with self._autocast(prepacked):
            return self._finish(self._forward(pixels, view_mask, visual, prepacked), normalize)

    def encode_text(self, texts: str | list[str], *, normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Text(s) -> (N, embed_dim) CLIP text embeddings (float32, model device)."""
        texts = checked_texts(texts)
        self._check_weights()
        out = []
        prepacked = self._prepacked_text.get(self.clip, self.device, self.precision)
        with torch.inference_mode(), self._autocast(prepacked):
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
                out.append(self.clip.encode_text(tokens) if prepacked is None else prepacked.encode(tokens))
        return self._finish(torch.cat(out), normalize)

    @property
    def text_precision(self) -> str:
        """The precision ``encode_text`` runs in (what label matrices are kept by)."""
        return self.precision

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = tokenizer_for(self.config)
        return self._tokenizer

    @staticmethod
    def _finish(embeddings: torch.Tensor, normalize: bool) -> torch.Tensor:
        embeddings = embeddings.float()
        return F.normalize(embeddings, dim=-1) if normalize else embeddings

    # ------------------------------------------------------------------ fine-tuning
    def trainable_parameters(self, layers_threshold: int | None = None) -> Iterator[tuple[str, nn.Parameter]]:
        """The parameters Duoduo CLIP fine-tunes: attention (in_proj, out_proj) of visual blocks
        >= layers_threshold (default: the model's). Everything else stays frozen."""
        threshold = self.layers_threshold if layers_threshold is None else layers_threshold
        for name, param in self.named_parameters():
            match = _ATTN_PARAM.match(name)
            if match and int(match.group(1)) >= threshold:
                yield name, param

    def freeze_for_finetuning(self, layers_threshold: int | None = None) -> int:
        """Set requires_grad on exactly the trainable parameters; return their element count."""
        trainable = {name for name, _ in self.trainable_parameters(layers_threshold)}
        count = 0
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)
            count += param.numel() if name in trainable else 0
        return count

    def configure_optimizer(self, lr: float = 5e-5, weight_decay: float = 0.01, **adamw: Any) -> torch.optim.AdamW:
        """AdamW over the parameters that currently require grad (the published recipe's defaults)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no parameter requires grad: call freeze_for_finetuning() first")
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **adamw)

    def extra_repr(self) -> str:
        return (
            f"arch={self.config.arch}, layers_threshold={self.layers_threshold}/{self.num_blocks}, "
            f"embed_dim={self.embed_dim}, precision={self.precision}, weights={self.weights_source}"
        )


def embeddings_to_numpy(embeddings: torch.Tensor) -> np.ndarray:
    return embeddings.detach().to("cpu", torch.float32).numpy()
