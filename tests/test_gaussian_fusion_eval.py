"""Does fusing the Gaussian embedding with the multi-view one help? The evaluation's fused rows, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import make_tiny

from ddclip_core import LabelSet, load_model, save_export
from ddclip_core.gaussians import GSCLIPEncoder, GSEncoderConfig, load_gs_encoder, save_gs_encoder
from training.catalog import pybullet_objects
from training.gaussian_data import FuseSettings, write_gaussians
from training.gaussian_eval import evaluate_gaussians, per_class_top1, write_gaussian_report
from training.layout import DataFolder
from training.pack import pack
from training.render import MeshObject, RenderSettings, render_all
from training.targets import compute_targets

pytest.importorskip("pybullet", reason="data preparation renders with pybullet (the 'train' extra)")

OBJECTS = ["duck", "mug", "sphere_red", "table"]  # 4 classes, 2 renders each: the smallest table with a mean
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("gsfusion")
    weights = save_export(make_tiny(layers_threshold=2), root / "export")
    catalogue = {obj.uid: obj for obj in pybullet_objects()}
    objects = [catalogue[uid] for uid in OBJECTS]
    variants = [MeshObject(f"{o.uid}-r{r}", o.path, o.name, o.category, o.euler) for o in objects for r in range(2)]
    render_all(variants, root / "renders", RenderSettings(seed=0, depth=True), workers=1, progress=False)
    pack(root / "renders", root / "data", splits={v.uid: "val" for v in variants}, progress=False)
    compute_targets(DataFolder(root / "data"), load_model(weights, device="cpu"), progress=False)
    write_gaussians(DataFolder(root / "data"), root / "renders", FuseSettings(max_points=256), progress=False)
    torch.manual_seed(0)
    encoder = save_gs_encoder(GSCLIPEncoder(GSEncoderConfig.tiny(32)), root / "gs.safetensors")
    return root / "data", weights, encoder


def test_fused_rows_sit_between_the_two_and_match_a_fusion_by_hand(setup, tmp_path):
    data_root, weights, encoder_path = setup
    data, model, encoder = DataFolder(data_root), load_model(weights, device="cpu"), load_gs_encoder(encoder_path)
    result = evaluate_gaussians(encoder, data, model, templates="simple", fusion_weights=WEIGHTS)
    fused = [f"fused, Gaussian weight {w:g}" for w in WEIGHTS]
    assert list(result.rows) == ["GS-CLIP (Gaussians)", "Duoduo CLIP (12 views)", *fused, "plain CLIP (12-view mean)"]
    # The endpoints are the single embeddings: weight 0 is Duoduo alone, 1 is GS alone.
    assert result.rows[fused[0]] == result.rows["Duoduo CLIP (12 views)"]
    assert result.rows[fused[-1]] == result.rows["GS-CLIP (Gaussians)"]
    assert result.sources[fused[2]] == f"{model.weights_id} + {encoder.weights_id}"

    # Weight 0.5 by hand: the normalised mean of the two normalised embeddings, from the public encoders.
    rows = data.rows("val")
    with h5py.File(data_root / "gaussians.h5") as f:
        gs = encoder.eval().encode([f["features"][r, : f["counts"][r]].astype(np.float32) for r in rows])
    with h5py.File(data_root / "mv_images.h5") as f:
        mv = model.encode_views([f["imgs"][r].transpose(0, 2, 3, 1) for r in rows])
    half = torch.nn.functional.normalize(gs / gs.norm(dim=1, keepdim=True) + mv / mv.norm(dim=1, keepdim=True), dim=1)
    text = torch.tensor(LabelSet(result.classes, templates="simple").embeddings(model, cache=False)).float()
    target = torch.tensor([result.classes.index(data.objects[r].category) for r in rows])
    assert result.rows[fused[2]] == pytest.approx(per_class_top1(half, text, target, result.classes))
    for top1 in result.rows.values():
        assert top1["mean"] == pytest.approx(np.mean([top1[c] for c in result.classes]))

    table = write_gaussian_report(result, tmp_path)[1].read_text()
    assert "| fused, Gaussian weight 0.5 |" in table and "| fused, Gaussian weight 0.25 |" in table


def test_cli_fusion_weights_and_bad_weights(setup, tmp_path):
    from ddclip_cli import main

    data_root, weights, encoder_path = setup
    code = main(["eval", "gaussians", str(data_root), "--encoder", str(encoder_path), "--weights", str(weights),
                 "--templates", "simple", "--fusion-weights", "0.25,0.5,0.75", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    top1 = json.loads((tmp_path / "gaussians_zero_shot.json").read_text())["top1"]
    assert [k for k in top1 if k.startswith("fused")] == [f"fused, Gaussian weight {w}" for w in (0.25, 0.5, 0.75)]
    assert all(set(row) == {"ball", "mug", "rubber duck", "table", "mean", "overall"} for row in top1.values())
    assert "| fused, Gaussian weight 0.75 |" in (tmp_path / "gaussians_zero_shot.md").read_text()

    data, model, encoder = DataFolder(data_root), load_model(weights, device="cpu"), load_gs_encoder(encoder_path)
    with pytest.raises(ValueError, match="fusion weight 1.5 is outside"):
        evaluate_gaussians(encoder, data, model, templates="simple", fusion_weights=[0.5, 1.5])
    with pytest.raises(ValueError, match="fusion rows need the multi-view embeddings"):
        evaluate_gaussians(encoder, data, model, templates="simple", multiview=False, fusion_weights=[0.5])
    with pytest.raises(SystemExit):
        main(["eval", "gaussians", str(data_root), "--encoder", str(encoder_path), "--fusion-weights", "0.5,x"])
