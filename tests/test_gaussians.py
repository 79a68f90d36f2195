"""GS-CLIP: Gaussian splat PLY files, lifting points to Gaussians, and the Gaussian encoder."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ddclip_core.gaussians import (
    SH_C0,
    Gaussians,
    GSCLIPEncoder,
    GSEncoderConfig,
    PlyError,
    PosedImage,
    RefinementUnavailableWarning,
    lift,
    lift_points,
    load_gs_encoder,
    points_from_depth,
    read_gaussians,
    read_point_cloud,
    read_vertices,
    save_gs_encoder,
    write_gaussians,
    write_point_cloud,
)
from ddclip_core.gaussians._knn import knn_sq_distances
from ddclip_core.gaussians._ops import farthest_point_sample, knn
from ddclip_core.gaussians.ply import write_vertices
from ddclip_core.gaussians.preprocess import CloudSettings
from ddclip_core.weights import CheckpointError


def random_gaussians(n: int, seed: int = 0, sh_rest: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(
        positions=rng.normal(size=(n, 3)),
        colours=rng.random((n, 3)),
        opacity=rng.uniform(0.01, 0.99, n),
        scales=rng.uniform(0.01, 0.2, (n, 3)),
        rotations=rng.normal(size=(n, 4)),
        sh_rest=rng.normal(size=(n, sh_rest)) if sh_rest else None,
    )


def assert_same_gaussians(a: Gaussians, b: Gaussians) -> None:
    for name in ("positions", "colours", "opacity", "scales", "rotations"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6, err_msg=name)


def permuted(g: Gaussians, order: np.ndarray) -> Gaussians:
    return Gaussians(g.positions[order], g.colours[order], g.opacity[order], g.scales[order], g.rotations[order])


@pytest.fixture(scope="module")
def encoder() -> GSCLIPEncoder:
    torch.manual_seed(0)
    return GSCLIPEncoder(GSEncoderConfig.tiny()).eval()


# ------------------------------------------------------------------------------------------- PLY
@pytest.mark.parametrize("ascii", [False, True])
@pytest.mark.parametrize("sh_rest", [0, 45])
def test_ply_round_trip(tmp_path, ascii, sh_rest):
    original = random_gaussians(50, sh_rest=sh_rest)
    path = write_gaussians(tmp_path / "splats.ply", original, ascii=ascii)
    header = path.read_bytes()[:200].decode("ascii", "replace")
    assert ("format ascii 1.0" in header) == ascii
    back = read_gaussians(path)
    assert_same_gaussians(original, back)
    if sh_rest:
        np.testing.assert_allclose(back.sh_rest, original.sh_rest, rtol=1e-6)
    else:
        assert back.sh_rest is None
    fields = read_vertices(path).dtype.names
    assert fields[:6] == ("x", "y", "z", "nx", "ny", "nz") and fields[-4:] == ("rot_0", "rot_1", "rot_2", "rot_3")
    assert sum(f.startswith("f_rest_") for f in fields) == sh_rest


def raw_table(rows: dict[str, list[float]], dtype: str = "<f4") -> np.ndarray:
    table = np.empty(len(next(iter(rows.values()))), dtype=[(name, dtype) for name in rows])
    for name, values in rows.items():
        table[name] = values
    return table


RAW = {
    "x": [1.0, 0.0], "y": [2.0, 0.0], "z": [3.0, 0.0],
    "f_dc_0": [0.0, 0.25 / SH_C0], "f_dc_1": [0.0, -0.5 / SH_C0], "f_dc_2": [0.0, 10.0],
    "opacity": [0.0, np.log(0.9 / 0.1)],
    "scale_0": [np.log(2.0), 0.0], "scale_1": [np.log(0.5), 0.0], "scale_2": [0.0, 0.0],
    "rot_0": [2.0, 0.0], "rot_1": [0.0, 3.0], "rot_2": [0.0, 0.0], "rot_3": [0.0, 4.0],
}  # fmt: skip


def test_ply_activations(tmp_path):
    path = write_vertices(tmp_path / "raw.ply", raw_table(RAW))
    g = read_gaussians(path)
    np.testing.assert_allclose(g.positions, [[1, 2, 3], [0, 0, 0]])
    np.testing.assert_allclose(g.colours, [[0.5, 0.5, 0.5], [0.75, 0.0, 1.0]], atol=1e-6)  # 0.5 + C0 f_dc, clipped
    np.testing.assert_allclose(g.opacity, [0.5, 0.9], atol=1e-6)  # sigmoid
    np.testing.assert_allclose(g.scales, [[2.0, 0.5, 1.0], [1.0, 1.0, 1.0]], rtol=1e-6)  # exp
    np.testing.assert_allclose(g.rotations, [[1, 0, 0, 0], [0, 0.6, 0, 0.8]], atol=1e-7)  # normalised (w, x, y, z)


def test_ply_big_endian_and_double(tmp_path):
    table = raw_table(RAW, ">f8")
    header = "ply\nformat binary_big_endian 1.0\nelement vertex 2\n"
    header += "".join(f"property double {name}\n" for name in RAW) + "end_header\n"
    path = tmp_path / "be.ply"
    path.write_bytes(header.encode() + table.tobytes())
    np.testing.assert_allclose(read_gaussians(path).scales[0], [2.0, 0.5, 1.0], rtol=1e-6)


@pytest.mark.parametrize("ascii", [False, True])
def test_point_cloud_ply_round_trip(tmp_path, ascii):
    rng = np.random.default_rng(1)
    points = rng.normal(size=(30, 3)).astype(np.float32)
    colours = rng.integers(0, 256, (30, 3), dtype=np.uint8)
    points_back, colours_back = read_point_cloud(write_point_cloud(tmp_path / "pc.ply", points, colours, ascii=ascii))
    np.testing.assert_array_equal(points_back, points)
    np.testing.assert_allclose(colours_back, colours / 255.0, atol=1e-7)
    with pytest.raises(PlyError, match="use read_point_cloud"):
        read_gaussians(tmp_path / "pc.ply")


def test_ply_missing_fields_named(tmp_path):
    rows = {k: v for k, v in RAW.items() if k not in ("opacity", "rot_3")}
    path = write_vertices(tmp_path / "missing.ply", raw_table(rows))
    with pytest.raises(PlyError, match=r"missing vertex fields \['opacity', 'rot_3'\]"):
        read_gaussians(path)
    with pytest.raises(PlyError, match="missing vertex fields.*red"):
        read_point_cloud(path)


def test_ply_nan_named(tmp_path):
    rows = dict(RAW, scale_1=[np.nan, 0.0])
    path = write_vertices(tmp_path / "nan.ply", raw_table(rows))
    with pytest.raises(PlyError, match=r"NaN or infinite values.*'scale_1': 1"):
        read_gaussians(path)


@pytest.mark.parametrize("ascii", [False, True])
def test_ply_truncated_and_wrong_count(tmp_path, ascii):
    path = write_gaussians(tmp_path / "full.ply", random_gaussians(10), ascii=ascii)
    data = path.read_bytes()
    cut = tmp_path / "cut.ply"
    cut.write_bytes(data[: len(data) - (200 if not ascii else len(data.splitlines()[-1]) * 3)])
    with pytest.raises(PlyError, match="truncated: the header declares 10 vertices"):
        read_gaussians(cut)
    fewer = tmp_path / "fewer.ply"
    fewer.write_bytes(data.replace(b"element vertex 10", b"element vertex 9"))
    with pytest.raises(PlyError, match="after the 9 declared vertices"):
        read_gaussians(fewer)


def test_ply_bad_headers(tmp_path):
    ascii1 = b"ply\nformat ascii 1.0\nelement vertex 1\n"
    cases = {
        b"solid mesh\n": "not a PLY file",
        b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n": "no 'end_header'",
        ascii1 + b"property list uchar int vertex_indices\nend_header\n3 0 1 2\n": "is a list",
        b"ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int i\nelement vertex 0\nend_header\n": "first",
        ascii1 + b"property float x\nproperty float x\nend_header\n1 1\n": "duplicated",
        ascii1 + b"property float x\nproperty float y\nend_header\n1\n": "has 1 values",
    }  # fmt: skip
    for i, (content, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.ply"
        path.write_bytes(content)
        with pytest.raises(PlyError, match=message):
            read_vertices(path)


# ------------------------------------------------------------------------------------- Gaussians
def test_features_normalised_per_object():
    g = random_gaussians(40)
    g.positions = g.positions * 7 + 100
    f = g.to_features()
    assert f.shape == (40, 14) and f.dtype == np.float32
    centre = (g.positions.min(0) + g.positions.max(0)) / 2
    radius = np.linalg.norm(g.positions - centre, axis=1).max()
    np.testing.assert_allclose(f[:, :3], (g.positions - centre) / radius, atol=1e-5)
    assert np.isclose(np.linalg.norm(f[:, :3], axis=1).max(), 1.0, atol=1e-6)
    np.testing.assert_allclose(f[:, 7:10], g.scales / radius, rtol=1e-5)
    np.testing.assert_allclose(f[:, 3:7], np.c_[g.colours, g.opacity])
    assert (f[:, 10] >= 0).all()  # q and -q: one canonical sign
    np.testing.assert_allclose(np.abs(f[:, 10:]), np.abs(g.rotations), atol=1e-7)


def test_gaussians_validation():
    g = random_gaussians(5)
    with pytest.raises(ValueError, match=r"colours must be in \[0.0, 1.0\]"):
        Gaussians(g.positions, g.colours + 1, g.opacity, g.scales, g.rotations)
    with pytest.raises(ValueError, match="opacity has 4 rows but positions has 5"):
        Gaussians(g.positions, g.colours, g.opacity[:4], g.scales, g.rotations)
    with pytest.raises(ValueError, match="scales must be > 0"):
        Gaussians(g.positions, g.colours, g.opacity, -g.scales, g.rotations)


# ------------------------------------------------------------------------------------------ lift
def test_lift_scale_from_hand_computed_neighbours():
    # Unit-square corners plus a far point: squared distances from (0,0,0) to its 3 nearest are 1, 1, 2.
    points = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [10, 0, 0]], dtype=np.float32)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]], dtype=np.uint8)
    g = lift_points(points, colours, k=3, opacity=0.1)
    expected = np.sqrt([(1 + 1 + 2) / 3] * 4 + [(81 + 82 + 100) / 3])
    np.testing.assert_allclose(g.scales, np.repeat(expected[:, None], 3, 1), rtol=1e-6)
    np.testing.assert_array_equal(g.positions, points)
    np.testing.assert_allclose(g.colours, colours / 255.0)
    np.testing.assert_array_equal(g.rotations, np.tile([1, 0, 0, 0], (5, 1)))
    np.testing.assert_allclose(g.opacity, 0.1)


def test_knn_grid_path_is_exact():
    # Above the brute-force size: the grid path, on a surface with duplicates and a sparse outlier.
    rng = np.random.default_rng(3)
    surface = rng.normal(size=(2500, 3))
    surface /= np.linalg.norm(surface, axis=1, keepdims=True)
    points = np.concatenate([surface, surface[:300], [[40.0, 0, 0]]])
    got = knn_sq_distances(points, 3)
    d2 = ((points[:, None] - points[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    np.testing.assert_allclose(got, np.sort(d2, axis=1)[:, :3], rtol=1e-12, atol=0)
    assert (got[2500:2800, 0] == 0).all()


def test_lift_bad_input_named():
    good = np.zeros((10, 3))
    with pytest.raises(ValueError, match="NaN or infinite coordinates in 1 of 10"):
        lift_points(np.where(np.arange(10)[:, None] == 4, np.nan, np.random.rand(10, 3)), good)
    with pytest.raises(ValueError, match="empty point cloud"):
        lift_points(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="9 colours for 10 points"):
        lift_points(np.random.rand(10, 3), np.zeros((9, 3)))
    with pytest.raises(ValueError, match="more than k=3 points"):
        lift_points(np.random.rand(3, 3), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"float colours must be finite and in \[0, 1\]"):
        lift_points(np.random.rand(10, 3), np.full((10, 3), 2.0))


def test_lift_reports_refinement():
    points, colours = np.random.default_rng(0).random((20, 3)), np.full((20, 3), 0.5)
    result = lift(points, colours)
    assert not result.refined and "no images" in result.note
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the un-refined fallback does not apply")
    view = PosedImage(np.zeros((8, 8, 3), np.uint8), np.eye(3), np.eye(4))
    with pytest.warns(RefinementUnavailableWarning, match="not refined"):
        result = lift(points, colours, [view], device="cuda")
    assert not result.refined and result.note.startswith("not refined")
    assert_same_gaussians(result.gaussians, lift_points(points, colours))


def test_points_from_depth():
    depth = np.array([[2.0, 0.0, 2.0], [np.nan, 4.0, 4.0]])
    rgb = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    K = np.array([[2.0, 0, 1], [0, 2.0, 0.5], [0, 0, 1]])
    points, colours = points_from_depth(depth, K, rgb)
    # u, v = column, row; x = (u - cx) z / fx, y = (v - cy) z / fy
    np.testing.assert_allclose(points, [[-1, -0.5, 2], [1, -0.5, 2], [0, 1, 4], [2, 1, 4]])
    np.testing.assert_allclose(colours, rgb[[0, 0, 1, 1], [0, 2, 1, 2]] / 255.0)
    pose = np.eye(4)
    pose[:3, 3] = [10, 0, 0]
    moved, _ = points_from_depth(depth * 1000, K, rgb, depth_scale=1e-3, max_depth=3.0, camera_to_world=pose)
    np.testing.assert_allclose(moved, [[9, -0.5, 2], [11, -0.5, 2]])
    with pytest.raises(ValueError, match="no valid depth pixels"):
        points_from_depth(np.zeros((2, 3)), K, rgb)
    with pytest.raises(ValueError, match="rgb must be"):
        points_from_depth(depth, K, rgb[:, :2])


# --------------------------------------------------------------------------------------- encoder
def test_fps_and_knn_deterministic_ties():
    # A 4x4x4 grid: every distance is tied many times over.
    grid = torch.stack(torch.meshgrid(*[torch.arange(4.0)] * 3, indexing="ij"), -1).reshape(1, 64, 3)
    mask = torch.ones(1, 64, dtype=torch.bool)
    chosen, valid = farthest_point_sample(grid, mask, 8)
    assert valid.all() and len(set(chosen[0].tolist())) == 8
    assert chosen[0, 0] == 0  # all 8 corners are farthest from the centre: the smallest coordinates win
    found, ok = knn(grid[:, :1], grid, mask, 4)
    assert found[0, 0].tolist() == [0, 1, 4, 16] and ok.all()  # self, then the 3 unit neighbours by index
    found, ok = knn(grid[:, :1], grid, torch.arange(64)[None] < 2, 4)
    assert ok[0, 0].tolist() == [True, True, False, False]


@pytest.mark.parametrize("kind", ["random", "grid"])
def test_encoder_permutation_invariant(encoder, kind):
    g = random_gaussians(200, seed=5)
    if kind == "grid":  # exact ties in coordinates and distances
        g.positions = np.stack(np.meshgrid(*[np.arange(6.0)] * 3, indexing="ij"), -1).reshape(-1, 3)[:200]
    embedding = encoder.encode(g)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(200)
        torch.testing.assert_close(encoder.encode(permuted(g, order)), embedding, rtol=0, atol=1e-6)
    assert not torch.allclose(encoder.encode(random_gaussians(200, seed=6)), embedding, atol=1e-3)


def test_encoder_padded_batch_equals_single_runs(encoder):
    objects = [random_gaussians(n, seed=n) for n in (3, 12, 60, 250)]  # below and above npoints / k
    single = torch.cat([encoder.encode(g) for g in objects])
    batched = encoder.encode(objects)
    assert batched.shape == (4, 32)
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)
    torch.testing.assert_close(encoder.encode(objects, batch_size=3), single, rtol=0, atol=1e-5)
    # The raw tensor path: garbage in the padding must not matter.
    features = torch.randn(2, 300, 14) * 100
    mask = torch.zeros(2, 300, dtype=torch.bool)
    for i, g in enumerate(objects[2:]):
        features[i, : len(g)] = torch.from_numpy(g.to_features())
        mask[i, : len(g)] = True
    torch.testing.assert_close(encoder.encode(features, mask=mask), single[2:], rtol=0, atol=1e-5)


def test_encoder_output_and_gradients(encoder):
    g = random_gaussians(80)
    out = encoder.encode(g)
    assert out.shape == (1, 32) and torch.allclose(out.norm(dim=-1), torch.ones(1))
    torch.testing.assert_close(encoder.encode(g.to_features()), out, rtol=0, atol=0)  # (N, 14) array input
    raw = encoder.encode(g, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(1))
    features = torch.from_numpy(g.to_features())[None].requires_grad_(True)
    encoder.encode(features).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no valid Gaussians"):
        encoder(torch.zeros(1, 5, 14), torch.zeros(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, N, 14\)"):
        encoder(torch.zeros(1, 5, 13))


def test_encoder_weights_id_follows_training_steps_and_config_changes():
    """Its id names what makes the embeddings: memories and enrolled names accept embeddings by it."""
    torch.manual_seed(1)
    encoder = GSCLIPEncoder(GSEncoderConfig.tiny())
    first = encoder.weights_id
    assert encoder.weights_id == first  # unchanged: the same id (kept, not hashed again)
    with torch.no_grad():
        next(encoder.parameters()).add_(0.01)  # what an optimizer step does
    stepped = encoder.weights_id
    assert stepped != first  # before: the id of the weights before the step
    encoder.config.cloud = CloudSettings(max_points=2048)  # how its clouds are prepared is part of the id
    assert encoder.weights_id not in (first, stepped)


def test_encoder_checkpoint_round_trip_and_mismatch(tmp_path, encoder):
    path = save_gs_encoder(encoder, tmp_path / "gs.safetensors")
    loaded = load_gs_encoder(path)
    g = random_gaussians(70)
    torch.testing.assert_close(loaded.encode(g), encoder.encode(g), rtol=0, atol=0)
    assert loaded.weights_id == encoder.weights_id
    with pytest.raises(CheckpointError, match="config differs.*embed_dim"):
        load_gs_encoder(path, config=GSEncoderConfig.tiny(embed_dim=16))
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "ddclip"})
    with pytest.raises(CheckpointError, match="not a GS-CLIP encoder checkpoint"):
        load_gs_encoder(other)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("head.4")}
    state["extra.weight"] = torch.zeros(1)
    metadata = {"format": "ddclip-gsclip", "format_version": "1", "config": encoder.config.to_json()}
    save_file(state, str(other), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"missing keys: head\.4\.weight.*unexpected keys: extra\.weight"):
        load_gs_encoder(other)
    other.write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_gs_encoder(other)


def test_config_validation():
    with pytest.raises(ValueError, match="fusion_groups must be in 1..npoints"):
        GSEncoderConfig(npoints=(32, 8), fusion_groups=64)
    with pytest.raises(ValueError, match="neighbours of level 1 exceed the centres of the level before: 16 > 8"):
        GSEncoderConfig(npoints=(8, 4), neighbours=(8, 16), fusion_groups=8)
    with pytest.raises(ValueError, match="one entry per level"):
        GSEncoderConfig(npoints=(32,), neighbours=(8, 8))
    assert GSEncoderConfig.from_json(GSEncoderConfig.tiny().to_json()) == GSEncoderConfig.tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert GSEncoderConfig().embed_dim == 512
