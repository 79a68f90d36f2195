"""The ROS-free perception engine: tracked views and clouds in, shape embeddings, matches and answers out.

from ddclip_core.perception import PerceptionConfig, QueryRequest, open_perception
engine = open_perception(PerceptionConfig(weights="Four_1to6F_bs1600_LT6.ckpt", bank="objaverse_bank"))
engine.on_results = print
engine.start()
engine.add_view("mug-1", rgb_view, ended=True)       # (H, W, 3) uint8
engine.query(QueryRequest("a red mug"))
engine.close()
"""

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
