"""GS-CLIP: 3D Gaussian splats of an object -> an embedding in the same CLIP space. No ROS in here.

from ddclip_core.gaussians import GSCLIPEncoder, GSEncoderConfig, lift_points, read_gaussians
splats = read_gaussians("object.ply")                           # a 3DGS PLY, or:
splats = lift_points(points, colours)                           # a coloured point cloud
embedding = GSCLIPEncoder(GSEncoderConfig()).eval().encode(splats)   # (1, 512), L2-normalised
CloudEmbedder(encoder).embed([(points, colours)], prepared=False)   # a raw cloud, prepared as in training
"""

from .checkpoint import load_gs_encoder, save_gs_encoder
from .cloud import CloudEmbedder
from .config import GSEncoderConfig
from .encoder import GSCLIPEncoder
from .lift import LiftResult, lift, lift_points, points_from_depth
from .ply import PlyError, read_gaussians, read_point_cloud, read_vertices, write_gaussians, write_point_cloud
from .preprocess import CloudSettings, PreparedCloud, prepare_cloud, voxel_average
from .refine import PosedImage, Refinement, RefinementUnavailableWarning, refine_gaussians, render_gaussians
from .splats import FEATURE_NAMES, SH_C0, Gaussians

__all__ = [
    "FEATURE_NAMES",
    "SH_C0",
    "CloudEmbedder",
    "CloudSettings",
    "GSCLIPEncoder",
    "GSEncoderConfig",
    "Gaussians",
    "LiftResult",
    "PlyError",
    "PosedImage",
    "PreparedCloud",
    "Refinement",
    "RefinementUnavailableWarning",
    "lift",
    "lift_points",
    "load_gs_encoder",
    "points_from_depth",
    "prepare_cloud",
    "read_gaussians",
    "read_point_cloud",
    "read_vertices",
    "refine_gaussians",
    "render_gaussians",
    "save_gs_encoder",
    "voxel_average",
    "write_gaussians",
    "write_point_cloud",
]
