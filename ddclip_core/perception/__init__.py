"""The ROS-free perception engine: tracked views and clouds in, shape embeddings, matches and answers out.

from ddclip_core.perception import PerceptionConfig, QueryRequest, open_perception
engine = open_perception(PerceptionConfig(weights="Four_1to6F_bs1600_LT6.ckpt", bank="objaverse_bank"))
engine.on_results = print
engine.start()
engine.add_view("mug-1", rgb_view, ended=True)       # (H, W, 3) uint8
engine.query(QueryRequest("a red mug"))
engine.close()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# Lazy, so the ROS node reads and checks its parameters (settings, types) before the engine's imports
# (torch, open_clip) and refuses a bad one at once.
_MODULE_OF, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "engine": "Perception",
        "frames": "Box",
        "loading": "open_perception",
        "settings": "RANGES PerceptionConfig PerceptionSettings",
        "types": "EnrollAnswer ObjectResult QueryAnswer QueryHit QueryRequest RequestError Source StartupError",
    },
)

if TYPE_CHECKING:
    from .engine import Perception
    from .frames import Box
    from .loading import open_perception
    from .settings import RANGES, PerceptionConfig, PerceptionSettings
    from .types import (
        EnrollAnswer,
        ObjectResult,
        QueryAnswer,
        QueryHit,
        QueryRequest,
        RequestError,
        Source,
        StartupError,
    )

__all__ = [
    "RANGES",
    "Box",
    "EnrollAnswer",
    "ObjectResult",
    "Perception",
    "PerceptionConfig",
    "PerceptionSettings",
    "QueryAnswer",
    "QueryHit",
    "QueryRequest",
    "RequestError",
    "Source",
    "StartupError",
    "open_perception",
]
