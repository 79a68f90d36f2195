"""GSCLIPEncoder: 3D Gaussians of an object -> one embedding in CLIP's space (GS-CLIP).

Input: the 14 attributes of each Gaussian (``Gaussians.to_features``: position, colour, opacity,
scale, rotation). A PointNet++ backbone (farthest point sampling, kNN groups, shared MLP, max-pool;
``config.npoints`` levels then a global level) gives the global feature; the Gaussian-Aware Fusion
branch turns groups of Gaussians into tokens for a small Transformer whose pooled output is added
to it; an MLP head maps the sum into CLIP space. Masks carry padding through every step, so objects
of any size share a batch and get exactly what they get alone (up to float rounding).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..identity import count_fused_optimizer_steps, weights_state
from ._ops import canonical_order, farthest_point_sample, gather, knn, masked_max, masked_mean
from .config import GSEncoderConfig
from .splats import NUM_FEATURES, Gaussians

GaussianInput = Gaussians | np.ndarray | Sequence[Gaussians | np.ndarray]


def shared_mlp(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    # LayerNorm, not the BatchNorm of PointNet++: per-point normalisation keeps every object's result
    # independent of what else (and how much padding) is in the batch, in training too.
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_channels, width), nn.LayerNorm(width), nn.GELU()]
        in_channels = width
    return nn.Sequential(*layers)


class GaussianAwareFusion(nn.Module):
    """Groups of Gaussians -> tokens (mini-PointNet over relative position + shape attributes, plus
    an embedding of the group centre) -> Transformer encoder -> mean and max pooled -> out_dim."""

    def __init__(self, config: GSEncoderConfig, out_dim: int) -> None:
        super().__init__()
        dim = config.fusion_dim
        self.tokens = shared_mlp(NUM_FEATURES, (dim, dim))  # relative xyz + the 11 non-position attributes
        self.position = nn.Sequential(nn.Linear(3, dim), nn.GELU(), nn.Linear(dim, dim))
        layer = nn.TransformerEncoderLayer(
            dim, config.fusion_heads, 4 * dim, config.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, config.fusion_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(2 * dim, out_dim)

    def forward(self, features: torch.Tensor, centres: torch.Tensor, valid: torch.Tensor,
                members: torch.Tensor, member_valid: torch.Tensor) -> torch.Tensor:  # fmt: skip
        centre_xyz = gather(features[..., :3], centres)
        grouped = gather(features, members)
        local = torch.cat([grouped[..., :3] - centre_xyz[:, :, None], grouped[..., 3:]], dim=-1)
        tokens = masked_max(self.tokens(local), member_valid, dim=2) + self.position(centre_xyz)
        tokens = self.norm(self.transformer(tokens, src_key_padding_mask=~valid))
        return self.out(torch.cat([masked_mean(tokens, valid, 1), masked_max(tokens, valid, 1)], dim=-1))


class GSCLIPEncoder(nn.Module):
    """Gaussian-splat shape encoder into CLIP's embedding space. ``encode`` is the inference API."""

    def __init__(self, config: GSEncoderConfig | None = None) -> None:
        super().__init__()
        count_fused_optimizer_steps()  # weights_id must see every training step
        self.config = config or GSEncoderConfig()
        cfg = self.config
        channels, self.levels = NUM_FEATURES, nn.ModuleList()
        for widths in cfg.sa_widths:
            self.levels.append(shared_mlp(channels + 3, widths))  # relative xyz + the point's features
            channels = widths[-1]
        self.global_mlp = shared_mlp(channels + 3, cfg.global_widths)
        self.fusion = GaussianAwareFusion(cfg, cfg.global_widths[-1])
        self.head = nn.Sequential(
            nn.LayerNorm(cfg.global_widths[-1]),
            nn.Linear(cfg.global_widths[-1], cfg.head_hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.head_hidden, cfg.embed_dim),
        )
        self._weights_id: tuple[tuple, str] | None = None  # (config and weights' state, its id)
        # The CLIP text space its training targets lived in (ddclip_core.text_space), kept by its
        # checkpoint; None: not known (an encoder built here, or saved before probes were kept).
        self.text_space: np.ndarray | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def weights_id(self) -> str:
        """Fingerprint of config and weights: embeddings are comparable iff these match. Made again when
        either changes (a training step, an in-place edit, a config field set), as DuoduoCLIP's."""
        config = self.config.to_json()
        state = (config, weights_state(self))
        if self._weights_id is None or self._weights_id[0] != state:
            digest = hashlib.sha256(config.encode())
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._weights_id = (state, f"gsclip-{digest.hexdigest()[:16]}")
        return self._weights_id[1]

    def load_state_dict(self, *args, **kwargs):  # nn.Module's own signature
        self._weights_id = None
        return super().load_state_dict(*args, **kwargs)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised features (B, N, 14) + validity mask (B, N) -> (B, embed_dim), differentiable."""
        if features.ndim != 3 or features.shape[-1] != NUM_FEATURES:
            raise ValueError(f"expected Gaussian features of shape (B, N, {NUM_FEATURES}), got {tuple(features.shape)}")
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        if mask.shape != features.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(features.shape[:2])}, got {mask.dtype} "
                             f"{tuple(mask.shape)}")  # fmt: skip
        empty = (~mask.any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"objects {empty} have no valid Gaussians")
        cfg = self.config
        shortfall = cfg.k_level1 - features.shape[1]
        if shortfall > 0:  # topk needs at least k candidates: pad with invalid rows
            features = F.pad(features, (0, 0, 0, shortfall))
            mask = F.pad(mask, (0, shortfall), value=False)
        features, mask = canonical_order(features, mask)

        xyz, feats, valid = features[..., :3], features, mask
        level1 = None
        for level, (count, k) in enumerate(zip(cfg.npoints, cfg.neighbours, strict=True)):
            centres, centre_valid = farthest_point_sample(xyz, valid, count)
            centre_xyz = gather(xyz, centres)
            members, member_valid = knn(centre_xyz, xyz, valid, cfg.k_level1 if level == 0 else k)
            if level == 0:
                level1 = (centres, centre_valid, members, member_valid)
            members, member_valid = members[..., :k], member_valid[..., :k]
            grouped = gather(torch.cat([xyz, feats], dim=-1), members)
            local = torch.cat([grouped[..., :3] - centre_xyz[:, :, None], grouped[..., 3:]], dim=-1)
            feats = masked_max(self.levels[level](local), member_valid, dim=2)
            xyz, valid = centre_xyz, centre_valid
        pooled = masked_max(self.global_mlp(torch.cat([xyz, feats], dim=-1)), valid, dim=1)

        centres, centre_valid, members, member_valid = level1
        groups, size = cfg.fusion_groups, cfg.fusion_group_size
        fused = self.fusion(features, centres[:, :groups], centre_valid[:, :groups],
                            members[:, :groups, :size], member_valid[:, :groups, :size])  # fmt: skip
        return self.head(pooled + fused)

    def encode(
        self, gaussians: GaussianInput | torch.Tensor, *, normalize: bool = True, mask: torch.Tensor | None = None,
        batch_size: int = 16,
    ) -> torch.Tensor:  # fmt: skip
        """Objects -> (B, embed_dim) float32 embeddings on the model's device (L2-normalised by default).

        gaussians: one ``Gaussians`` or (N, 14) feature array (-> (1, D)), or a list of them (objects
        of different sizes are padded together, ``batch_size`` per forward pass). A float tensor
        (B, N, 14) of already normalised features, with an optional (B, N) bool ``mask``, keeps autograd.
        """
        if isinstance(gaussians, torch.Tensor):
            if not torch.isfinite(gaussians).all():
                raise ValueError("Gaussian features contain NaN or infinity")
            mask = None if mask is None else mask.to(self.device)
            return _finish(self(gaussians.to(self.device, torch.float32), mask), normalize)
        if mask is not None:
            raise ValueError("mask only applies to a features tensor; lists of objects are padded for you")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        objects = as_feature_list(gaussians)
        out = []
        with torch.inference_mode():
            for start in range(0, len(objects), batch_size):
                features, valid = pad_objects(objects[start : start + batch_size])
                out.append(self(features.to(self.device), valid.to(self.device)))
        return _finish(torch.cat(out), normalize)


def as_feature_list(gaussians: GaussianInput) -> list[np.ndarray]:
    """One object or a list of objects -> list of validated (N, 14) float32 feature arrays."""
    single = isinstance(gaussians, Gaussians) or (isinstance(gaussians, np.ndarray) and gaussians.ndim == 2)
    items = [gaussians] if single else list(gaussians)
    if not items:
        raise ValueError("no objects given")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Gaussians):
            out.append(item.to_features())
            continue
        if not isinstance(item, np.ndarray):
            kind = type(item).__name__
            raise TypeError(f"object {i}: expected Gaussians or an (N, {NUM_FEATURES}) array, got {kind}")
        if item.ndim != 2 or item.shape[1] != NUM_FEATURES or len(item) == 0:
            raise ValueError(f"object {i}: feature array must be (N>=1, {NUM_FEATURES}), got {item.shape}")
        if not np.isfinite(item).all():
            raise ValueError(f"object {i}: feature array contains NaN or infinity")
        out.append(item.astype(np.float32))
    return out


def pad_objects(objects: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N_i, 14) arrays -> zero-padded (B, max N, 14) tensor and (B, max N) validity mask."""
    longest = max(len(o) for o in objects)
    features = torch.zeros(len(objects), longest, NUM_FEATURES)
    mask = torch.zeros(len(objects), longest, dtype=torch.bool)
    for i, obj in enumerate(objects):
        features[i, : len(obj)] = torch.from_numpy(obj)
        mask[i, : len(obj)] = True
    return features, mask


def _finish(embeddings: torch.Tensor, normalize: bool) -> torch.Tensor:
    embeddings = embeddings.float()
    return F.normalize(embeddings, dim=-1) if normalize else embeddings
