"""ddclip_core: Duoduo CLIP multi-view shape embeddings in CLIP's text space. No ROS in here.

import ddclip_core
model = ddclip_core.load_model("Four_1to6F_bs1600_LT6.ckpt")
shape = model.encode_views("couch.jpg", num_views=12)          # (1, 512), L2-normalised
text = model.encode_text(["a white couch", "a red mug"])       # (2, 512)
scores = shape @ text.T
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

_MODULE_OF, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "bank": "BankError BankMismatchError EmbeddingBank Match",
        "config": "DuoduoConfig PreprocessConfig",
        "factory": "load_model",
        "gaussians": "Gaussians GSCLIPEncoder GSEncoderConfig lift_points load_gs_encoder read_gaussians",
        "hub": "RandomWeightsWarning",
        "labels": "LabelSet",
        "model": "DuoduoCLIP embeddings_to_numpy",
        "preprocess": "Preprocessor",
        "view_cache": "ObjectViews ViewTokenCache",
        "weights": "CheckpointError read_weights save_export",
    },
)

if TYPE_CHECKING:
    from .bank import BankError, BankMismatchError, EmbeddingBank, Match
    from .config import DuoduoConfig, PreprocessConfig
    from .factory import load_model
    from .gaussians import Gaussians, GSCLIPEncoder, GSEncoderConfig, lift_points, load_gs_encoder, read_gaussians
    from .hub import RandomWeightsWarning
    from .labels import LabelSet
    from .model import DuoduoCLIP, embeddings_to_numpy
    from .preprocess import Preprocessor
    from .view_cache import ObjectViews, ViewTokenCache
    from .weights import CheckpointError, read_weights, save_export


__version__ = "0.1.0"

__all__ = [
    "BankError",
    "BankMismatchError",
    "CheckpointError",
    "DuoduoCLIP",
    "DuoduoConfig",
    "EmbeddingBank",
    "GSCLIPEncoder",
    "GSEncoderConfig",
    "Gaussians",
    "LabelSet",
    "Match",
    "ObjectViews",
    "PreprocessConfig",
    "Preprocessor",
    "RandomWeightsWarning",
    "ViewTokenCache",
    "embeddings_to_numpy",
    "lift_points",
    "load_gs_encoder",
    "load_model",
    "read_gaussians",
    "read_weights",
    "save_export",
]
