"""Architecture of the GS-CLIP Gaussian encoder: small, JSON-serialisable, travels in its checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .preprocess import CloudSettings


@dataclass
class GSEncoderConfig:
    """PointNet++ set abstraction + Gaussian-Aware Fusion + MLP head into CLIP space.

    npoints / neighbours / sa_widths: per set-abstraction level, the number of FPS centres, the kNN
        group size and the shared-MLP widths; a final level pools all centres (global_widths).
    fusion_*: the Transformer branch over ``fusion_groups`` groups of ``fusion_group_size``
        Gaussians (its groups are the first centres of level 1, so fusion_groups <= npoints[0]).
    embed_dim: the CLIP embedding size (512 for ViT-B-32).
    cloud: how point clouds are prepared for this encoder (``prepare_cloud``): the settings of its
        training data, so that every caller feeds it clouds as it was trained.
    """

    embed_dim: int = 512
    npoints: tuple[int, ...] = (512, 128)
    neighbours: tuple[int, ...] = (32, 32)
    sa_widths: tuple[tuple[int, ...], ...] = ((64, 64, 128), (128, 128, 256))
    global_widths: tuple[int, ...] = (256, 512, 1024)
    fusion_groups: int = 64
    fusion_group_size: int = 32
    fusion_dim: int = 256
    fusion_depth: int = 4
    fusion_heads: int = 4
    head_hidden: int = 1024
    dropout: float = 0.0
    cloud: CloudSettings = field(default_factory=CloudSettings)

    def __post_init__(self) -> None:
        if isinstance(self.cloud, dict):  # from JSON
            self.cloud = CloudSettings(**self.cloud)
        # JSON gives lists; tuples keep the config hashable and comparable.
        self.npoints = tuple(int(v) for v in self.npoints)
        self.neighbours = tuple(int(v) for v in self.neighbours)
        self.sa_widths = tuple(tuple(int(v) for v in widths) for widths in self.sa_widths)
        self.global_widths = tuple(int(v) for v in self.global_widths)
        self.validate()

    @classmethod
    def tiny(cls, embed_dim: int = 32) -> GSEncoderConfig:
        """A few thousand parameters, for tests."""
        return cls(
            embed_dim=embed_dim,
            npoints=(16, 4),
            neighbours=(8, 4),
            sa_widths=((16, 16), (24, 32)),
            global_widths=(32, 48),
            fusion_groups=8,
            fusion_group_size=8,
            fusion_dim=16,
            fusion_depth=1,
            fusion_heads=2,
            head_hidden=32,
        )

    @property
    def k_level1(self) -> int:
        """Neighbours found per level-1 centre (shared by level 1 and the fusion groups)."""
        return max(self.neighbours[0], self.fusion_group_size)

    def validate(self) -> None:
        levels = len(self.npoints)
        if levels < 1 or len(self.neighbours) != levels or len(self.sa_widths) != levels:
            raise ValueError(
                f"npoints, neighbours and sa_widths need one entry per level, got {levels}, "
                f"{len(self.neighbours)}, {len(self.sa_widths)}"
            )
        sizes = [*self.npoints, *self.neighbours, *(w for ws in self.sa_widths for w in ws), *self.global_widths]
        if min(sizes) < 1 or not all(self.sa_widths) or not self.global_widths:
            raise ValueError("all sizes must be >= 1 and every MLP needs at least one layer")
        if list(self.npoints) != sorted(self.npoints, reverse=True):
            raise ValueError(f"npoints must not increase from level to level, got {self.npoints}")
        too_many = [i for i in range(1, levels) if self.neighbours[i] > self.npoints[i - 1]]
        if too_many:
            raise ValueError(f"neighbours of level {too_many[0]} exceed the centres of the level before: "
                             f"{self.neighbours[too_many[0]]} > {self.npoints[too_many[0] - 1]}")  # fmt: skip
        if not 1 <= self.fusion_groups <= self.npoints[0]:
            raise ValueError(f"fusion_groups must be in 1..npoints[0] ({self.npoints[0]}), got {self.fusion_groups}")
        if self.fusion_group_size < 1 or self.fusion_depth < 0 or self.embed_dim < 1 or self.head_hidden < 1:
            raise ValueError("fusion_group_size, embed_dim and head_hidden must be >= 1, fusion_depth >= 0")
        if self.fusion_heads < 1 or self.fusion_dim % self.fusion_heads:
            raise ValueError(f"fusion_dim ({self.fusion_dim}) must be divisible by fusion_heads ({self.fusion_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.cloud.draw_points:  # as written before it existed: an encoder keeps its weights id
            del data["cloud"]["draw_points"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GSEncoderConfig:
        extra = set(data) - {f.name for f in fields(cls)}
        if extra:
            raise ValueError(f"unknown keys in GS encoder config: {sorted(extra)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> GSEncoderConfig:
        return cls.from_dict(json.loads(text))
