"""GS-CLIP training end to end on CPU: depth renders -> fused clouds -> gaussians.h5 -> Lightning -> eval."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import make_tiny

from ddclip_core import load_model, save_export
from ddclip_core.gaussians import load_gs_encoder
from ddclip_core.text_space import TextSpaceMismatch, text_probe
from training.catalog import pybullet_objects
from training.config import TrainConfig
from training.data import collate
from training.demo_set import captions_for
from training.gaussian_data import FuseSettings, fuse_views, object_features, read_render, write_gaussians
from training.gaussian_dataset import GaussianBatchSampler, GaussianDataset, GaussianItem, class_ids
from training.gaussian_eval import evaluate_gaussians, per_class_top1, write_gaussian_report
from training.gaussian_module import build_encoder, encoder_from_checkpoint
from training.layout import DataError, DataFolder
from training.loss import INIT_LOGIT_SCALE, ContrastiveLoss
from training.pack import pack
from training.render import MeshObject, RenderSettings, render_all
from training.targets import compute_targets
from training.train import train

pytest.importorskip("pybullet", reason="data preparation renders with pybullet (the 'train' extra)")

OBJECTS = ["duck", "mug", "soccerball", "sphere_red", "table", "table_square"]
RENDERS = 3
POINTS = 384


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    return save_export(make_tiny(layers_threshold=2), tmp_path_factory.mktemp("tiny") / "export")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, tiny_weights) -> Path:
    root = tmp_path_factory.mktemp("gsdemo")
    catalogue = {obj.uid: obj for obj in pybullet_objects()}
    variants, splits, captions = [], {}, {}
    for uid in OBJECTS:
        for r in range(RENDERS):
            obj = catalogue[uid]
            variants.append(MeshObject(f"{uid}-r{r}", obj.path, obj.name, obj.category, obj.euler))
            splits[variants[-1].uid] = "val" if r == RENDERS - 1 else "train"
            captions[variants[-1].uid] = captions_for(obj)
    report = render_all(variants, root / "renders", RenderSettings(seed=0, depth=True), workers=1, progress=False)
    assert report.rendered == len(variants) and report.failed == 0
    pack(root / "renders", root / "data", splits=splits, captions=captions, progress=False)
    data = DataFolder(root / "data")
    compute_targets(data, load_model(tiny_weights, device="cpu"), progress=False)
    write_gaussians(data, root / "renders", FuseSettings(max_points=POINTS), progress=False)
    return root / "data"


def _catalogue_object(uid: str) -> MeshObject:
    return next(obj for obj in pybullet_objects() if obj.uid == uid)


# ---------------------------------------------------------------------------------------------- data


def test_depth_back_projection_reproduces_known_geometry(tmp_path):
    cube, sphere = _catalogue_object("cube"), _catalogue_object("sphere_red")  # 1 m cube, 0.5 m radius ball
    render_all([cube, sphere], tmp_path, RenderSettings(depth=True), workers=1, progress=False)
    with np.load(tmp_path / "cube" / "depth.npz", allow_pickle=False) as f:
        depth = f["depth"]
    assert depth.shape == (12, 224, 224) and depth.dtype == np.float16
    assert (depth[:, 0, 0] == 0).all() and (depth > 0).mean() > 0.05  # background 0, object present

    views, depth, meta = read_render(tmp_path / "cube")
    points, colours = fuse_views(views, depth, meta["cameras"])
    to_surface = np.abs(np.abs(points) - 0.5).min(axis=1)  # distance to the nearest face plane
    assert np.abs(points).max() < 0.51 and np.percentile(to_surface, 99) < 0.01  # 2 mm median when written
    for axis in range(3):  # every face seen by some view
        for sign in (-1, 1):
            assert (np.abs(points[:, axis] - sign * 0.5) < 0.005).sum() > 100
    views, depth, meta = read_render(tmp_path / "sphere_red")
    points, colours = fuse_views(views, depth, meta["cameras"])
    radius = np.linalg.norm(points, axis=1)
    assert np.percentile(np.abs(radius - 0.5), 99) < 0.01
    assert colours[:, 0].mean() > 2 * colours[:, 1].mean()  # a red ball gives red points

    # The default render is unchanged: no depth file.
    render_all([MeshObject("plain", cube.path, "cube")], tmp_path / "plain", RenderSettings(), progress=False)
    assert sorted(p.name for p in (tmp_path / "plain" / "plain").iterdir()) == ["meta.json", "views.png"]


def test_gaussians_h5_is_aligned_with_the_rows(data_root):
    data = DataFolder(data_root)
    with h5py.File(data_root / "gaussians.h5") as f:
        features, counts = f["features"][:], f["counts"][:]
        centres, radii = f["centre"][:], f["radius"][:]
    assert features.shape == (18, POINTS, 14) and features.dtype == np.float16 and (counts == POINTS).all()
    renders = data_root.parent / "renders"
    for row in (0, 7, 17):
        expected, _, _ = object_features(renders / data.uids[row], FuseSettings(max_points=POINTS))
        np.testing.assert_allclose(features[row, : counts[row]], expected, atol=2e-3)
        world = features[row, :, :3].astype(np.float32) * radii[row] + centres[row]
        target = np.asarray(json.loads((renders / data.uids[row] / "meta.json").read_text())["cameras"][0]["target"])
        assert np.linalg.norm(world.mean(0) - target) < radii[row]  # the object's cloud, not another's
    # Normalised per object: unit sphere, colours in [0, 1], unit quaternions.
    assert np.abs(np.linalg.norm(features[..., :3].astype(np.float32), axis=-1).max(1) - 1).max() < 2e-3
    assert features[..., 3:7].min() >= 0 and features[..., 3:7].max() <= 1
    # Different objects give different Gaussians (the rows are not one object repeated).
    assert not np.allclose(features[0], features[3], atol=0.05)


def test_partial_clouds_are_fewer_views_of_the_same_object(data_root):
    data = DataFolder(data_root)
    with h5py.File(data_root / "gaussians.h5") as f:
        assert list(f.attrs["partial_views"]) == [1, 3] and json.loads(f.attrs["cloud"])["max_points"] == POINTS
        partial, counts, full = f["partial_features"][:], f["partial_counts"][:], f["features"][:]
        centres, radii = f["partial_centre"][:], f["partial_radius"][:]
        full_centres, full_radii = f["centre"][:], f["radius"][:]
    assert partial.shape == (18, 2, POINTS, 14) and (counts >= 16).all()
    unseen = np.zeros((18, 2))
    for row in range(18):
        whole = full[row, :, :3].astype(np.float32) * full_radii[row] + full_centres[row]
        for k in range(2):
            part = partial[row, k, : counts[row, k], :3].astype(np.float32) * radii[row, k] + centres[row, k]
            distances = np.sqrt(((whole[:, None] - part[None]) ** 2).sum(-1))
            assert np.median(distances.min(0)) < 0.15 * full_radii[row]  # on the object, in the same place
            unseen[row, k] = (distances.min(1) > 0.3 * full_radii[row]).mean()
    # One view misses a good part of the object (its back), three views less of it.
    print("share of the full cloud unseen by 1 and 3 views:", unseen.mean(0))
    assert unseen[:, 0].mean() > 0.1 and unseen[:, 0].mean() > 1.5 * unseen[:, 1].mean()
    dataset = GaussianDataset(data, partial_fraction=1.0)
    item = dataset[GaussianItem(0, 0.0, 5)]
    drawn = item["features"][item["mask"]].numpy()
    assert any(np.allclose(drawn, partial[0, k, : counts[0, k]], atol=1e-3) for k in range(2))
    assert dataset.cloud_settings().max_points == POINTS
    # Trained on draws of half the stored Gaussians: inference lifts all stored points and then draws
    # (before: it lifted half as many points, so every Gaussian was larger than in training).
    half = GaussianDataset(data, points=POINTS // 2).cloud_settings()
    assert (half.max_points, half.draw_points) == (POINTS, POINTS // 2)


def test_mesh_surface_source_through_the_cli(data_root, tmp_path):
    from ddclip_cli import main

    bare = tmp_path / "data"
    bare.mkdir()
    for name in ("mv_images.h5", "model_to_idx.json", "objects.csv"):
        if (data_root / name).exists():
            (bare / name).symlink_to(data_root / name)
    renders = data_root.parent / "renders"
    assert main(["data", "gaussians", str(bare), "--source", "mesh", "--renders", str(renders), "--points", "256"]) == 0
    data = DataFolder(bare)
    with h5py.File(bare / "gaussians.h5") as f:
        assert f.attrs["source"] == "mesh" and "partial_features" not in f
        features, counts = f["features"][:], f["counts"][:]
    assert features.shape == (18, 256, 14) and (counts == 256).all()
    duck = data.uids.index("duck-r0")
    red, green, blue = features[duck, :, 3:6].astype(np.float32).mean(0)  # a yellow duck, from its texture
    assert red > 0.8 and green > 0.6 and blue < 0.2
    # The mesh stands as in the renders (z up): the duck is taller than it is deep, like its depth cloud.
    rendered, _, _ = object_features(renders / "duck-r0", FuseSettings(max_points=256))
    assert np.ptp(features[duck, :, 2]) == pytest.approx(np.ptp(rendered[:, 2]), rel=0.15)
    with pytest.raises(SystemExit):
        main(["data", "gaussians", str(bare), "--source", "points"])


def test_bad_input_gives_clear_errors(data_root, tmp_path):
    renders = data_root.parent / "renders"
    folder = tmp_path / "nodepth"
    folder.mkdir()
    for name in ("meta.json", "views.png"):
        (folder / name).write_bytes((renders / "duck-r0" / name).read_bytes())
    with pytest.raises(DataError, match="no depth.npz; render with depth"):
        object_features(folder, FuseSettings())
    with (folder / "depth.npz").open("wb") as f:
        np.savez_compressed(f, depth=np.zeros((12, 224, 224), np.float16))
    with pytest.raises(DataError, match="empty point cloud"):
        object_features(folder, FuseSettings())
    with pytest.raises(DataError, match="nothing for 18 objects"):
        write_gaussians(DataFolder(data_root), tmp_path, progress=False)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("mv_images.h5", "model_to_idx.json", "image_embeddings.h5", "text_embeddings.h5"):
        (bare / name).symlink_to(data_root / name)
    with pytest.raises(DataError, match="run `ddclip data gaussians` first"):
        GaussianDataset(DataFolder(bare))
    with pytest.raises(ValueError, match="model.kind must be duoduo or gaussian"):
        TrainConfig.load(None, ["model.kind=pointnet"])


def test_class_balanced_sampler_draws_classes_uniformly():
    rows = np.arange(100)
    classes = np.array([0] * 80 + [1] * 15 + [2] * 5)  # 80 / 15 / 5 objects per class
    balanced = GaussianBatchSampler(rows, 10, classes=classes, seed=1)
    plain = GaussianBatchSampler(rows, 10, seed=1)
    drawn, plain_drawn = [], []
    for epoch in range(30):
        balanced.set_epoch(epoch)
        plain.set_epoch(epoch)
        drawn += [classes[item.row] for batch in balanced for item in batch]
        plain_drawn += [classes[item.row] for batch in plain for item in batch]
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.abs(share - 1 / 3).max() < 0.05  # 3000 draws
    assert np.bincount(plain_drawn, minlength=3)[0] / len(plain_drawn) == pytest.approx(0.8)
    assert len({item.row for item in drawn_rows(balanced) if classes[item.row] == 2}) == 5  # all minority objects
    # Deterministic per (seed, epoch); ranks get disjoint slices of the same global batch.
    assert list(balanced) == list(balanced)
    ranks = [GaussianBatchSampler(rows, 5, classes=classes, seed=1, rank=r, world_size=2) for r in range(2)]
    together = GaussianBatchSampler(rows, 10, classes=classes, seed=1)
    for a, b, whole in zip(*ranks, together, strict=True):
        assert [i.row for i in a + b] == [i.row for i in whole]
    with pytest.raises(ValueError, match="class indices"):
        GaussianBatchSampler(rows, 10, classes=classes[:5])


def drawn_rows(sampler: GaussianBatchSampler) -> list[GaussianItem]:
    return [item for batch in sampler for item in batch]


def test_class_ids_follow_categories(data_root):
    data = DataFolder(data_root)
    ids = class_ids(data, data.rows("train"))
    assert len(set(ids.tolist())) == 4  # ball, mug, rubber duck, table


# ---------------------------------------------------------------------------------------------- training


def _config(data_root: Path, weights: Path, out: Path, *overrides: str) -> TrainConfig:
    return TrainConfig.load(
        Path("training/configs/gaussian_demo.yaml"),
        [
            f"data.root={data_root}",
            f"model.init_weights={weights}",
            "gaussian.preset=tiny",
            "data.batch_size=6",
            "data.num_workers=0",
            "optim.lr=3e-3",
            f"trainer.out_dir={out}",
            "trainer.log_every_n_steps=1",
            "trainer.progress_bar=false",
            "trainer.seed=7",
            *overrides,
        ],
    )


def _fixed_loss(encoder, data_root: Path, logit_scale: float) -> dict[str, float]:
    """Loss over every train object, all stored Gaussians, first caption: no randomness."""
    data = DataFolder(data_root)
    dataset = GaussianDataset(data)
    batch = collate([dataset[GaussianItem(int(r), 0.0, 0)] for r in data.rows("train")])
    with torch.no_grad():
        shape = encoder.eval()(batch["features"], batch["mask"])
        loss = ContrastiveLoss(0.5, 0.5, init_logit_scale=logit_scale)
        return {k: v.item() for k, v in loss(shape, batch["image_target"], batch["text_target"]).items()}


def test_training_reduces_the_loss_and_exports(data_root, tiny_weights, tmp_path):
    config = _config(data_root, tiny_weights, tmp_path / "run", "trainer.max_epochs=15")
    assert (config.model.kind, config.loss.lambda_image, config.loss.lambda_text) == ("gaussian", 0.5, 0.5)
    pl.seed_everything(7)
    start = _fixed_loss(build_encoder(config.gaussian, 32), data_root, INIT_LOGIT_SCALE)
    result = train(config)
    with (tmp_path / "run" / "logs").glob("*/metrics.csv").__next__().open() as f:
        steps = [row for row in csv.DictReader(f) if row.get("train/loss")]
    assert len(steps) == 30  # 12 train objects / batch 6 = 2 steps x 15 epochs
    state = torch.load(result.last, map_location="cpu", weights_only=True)
    scale = state["state_dict"]["contrastive_loss.logit_scale"].item()
    trained = encoder_from_checkpoint(result.last)
    after = _fixed_loss(trained, data_root, scale)
    print("GS loss on the train objects:", *(f"{k} {start[k]:.3f} -> {after[k]:.3f}" for k in start))
    # 2.54 -> 2.25 when written, text 2.59 -> 2.06, image 2.48 -> 2.43: the tiny random CLIP's image
    # targets are nearly parallel, so the image term moves least.
    assert after["loss"] < 0.92 * start["loss"]
    assert after["loss_text"] < 0.9 * start["loss_text"] and after["loss_image"] < start["loss_image"]
    assert {"val/top1", "val/top1_class_mean", "val/loss"} <= set(result.metrics)
    exported = load_gs_encoder(result.export)
    assert exported.weights_id == encoder_from_checkpoint(result.best or result.last).weights_id
    # it says which CLIP text space it embeds into: that of the tower that made its targets
    assert np.abs(exported.text_space - text_probe(load_model(tiny_weights, device="cpu"))).max() < 1e-3


def test_validation_classes_need_the_targets_text_tower(data_root, tmp_path):
    other = save_export(make_tiny(layers_threshold=2, seed=9), tmp_path / "other")
    with pytest.raises(TextSpaceMismatch, match="targets.* another CLIP text space.* model.init_weights .* scores the"):
        train(_config(data_root, other, tmp_path / "run", "trainer.max_epochs=1"))


def test_evaluation_writes_the_per_class_table(data_root, tiny_weights, tmp_path):
    from ddclip_cli import main
    from ddclip_core.gaussians import GSCLIPEncoder, GSEncoderConfig, save_gs_encoder

    torch.manual_seed(0)
    encoder_path = save_gs_encoder(GSCLIPEncoder(GSEncoderConfig.tiny(32)), tmp_path / "gs.safetensors")
    model = load_model(tiny_weights, device="cpu")
    result = evaluate_gaussians(load_gs_encoder(encoder_path), DataFolder(data_root), model, templates="simple")
    assert result.classes == ["ball", "mug", "rubber duck", "table"] and result.counts["ball"] == 2
    assert list(result.rows) == ["GS-CLIP (Gaussians)", "Duoduo CLIP (12 views)", "plain CLIP (12-view mean)"]
    for top1 in result.rows.values():
        assert top1["mean"] == pytest.approx(np.mean([top1[c] for c in result.classes]))
        assert all(v in (0.0, 50.0, 100.0) for k, v in top1.items() if k in ("ball", "table"))  # 2 objects each
    files = write_gaussian_report(result, tmp_path / "eval")
    table = files[1].read_text()
    assert "| model | ball | mug | rubber duck | table | mean (classes) | overall |" in table
    assert json.loads(files[0].read_text())["top1"] == result.rows

    code = main(["eval", "gaussians", str(data_root), "--encoder", str(encoder_path), "--weights", str(tiny_weights),
                 "--templates", "simple", "--out", str(tmp_path / "cli")])  # fmt: skip
    assert code == 0 and (tmp_path / "cli" / "gaussians_zero_shot.md").read_text() == table
    code = main(["eval", "gaussians", str(data_root), "--encoder", str(encoder_path), "--weights", str(tiny_weights),
                 "--templates", "simple", "--partial", "1", "--no-multiview",
                 "--out", str(tmp_path / "partial")])  # fmt: skip
    partial = json.loads((tmp_path / "partial" / "gaussians_zero_shot.json").read_text())["top1"]
    assert list(partial) == ["GS-CLIP (1-view partial clouds)", "plain CLIP (12-view mean)"]
    with pytest.raises(DataError, match="no partial clouds of 2 views"):
        evaluate_gaussians(load_gs_encoder(encoder_path), DataFolder(data_root), model, partial_views=2)


def test_per_class_top1_by_hand():
    text = torch.eye(2)
    shape = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 0.5]])
    target = torch.tensor([0, 1, 1, 1])  # class a: 1 of 1 right; class b: 1 of 3 right
    out = per_class_top1(shape, text, target, ["a", "b"])
    assert out["a"] == 100.0 and out["b"] == pytest.approx(100 / 3)
    assert out["mean"] == pytest.approx((100 + 100 / 3) / 2) and out["overall"] == 50.0


def test_demo_set_with_gaussians(tmp_path, tiny_weights):
    from training.demo_set import make_demo_set

    model = load_model(tiny_weights, device="cpu")
    report = make_demo_set(tmp_path, model, renders=2, only=["cube", "sphere_red"], workers=1, progress=False,
                           gaussians=True)  # fmt: skip
    data = DataFolder(report.data)
    with h5py.File(report.data / "gaussians.h5") as f:
        assert f["features"].shape == (data.num_objects, 4096, 14) and (f["counts"][:] > 1000).all()
    assert all((tmp_path / "renders" / uid / "depth.npz").is_file() for uid in data.uids)
