"""The training pipeline end to end on CPU: real renders of real meshes, real h5 files, Lightning."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import make_tiny

from ddclip_core import load_model, save_export
from training.catalog import pybullet_objects
from training.config import TrainConfig
from training.demo_set import captions_for
from training.evaluate import evaluate_retrieval, evaluate_zero_shot, write_report
from training.layout import DataError, DataFolder
from training.loss import INIT_LOGIT_SCALE, ContrastiveLoss, info_nce
from training.pack import pack
from training.render import MeshObject, RenderSettings, render_all
from training.targets import compute_targets
from training.train import train

pytest.importorskip("pybullet", reason="data preparation renders with pybullet (the 'train' extra)")

# Two objects in three categories each: validation asks for categories seen in training.
OBJECTS = ["duck", "mug", "soccerball", "sphere_red", "table", "table_square"]
RENDERS = 3


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    return save_export(make_tiny(layers_threshold=2), tmp_path_factory.mktemp("tiny") / "export")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, tiny_weights) -> Path:
    root = tmp_path_factory.mktemp("demo")
    catalogue = {obj.uid: obj for obj in pybullet_objects()}
    variants, splits, captions = [], {}, {}
    for uid in OBJECTS:
        for r in range(RENDERS):
            obj = catalogue[uid]
            variant = MeshObject(f"{uid}-r{r}", obj.path, obj.name, obj.category, obj.euler)
            variants.append(variant)
            splits[variant.uid] = "val" if r == RENDERS - 1 else "train"
            captions[variant.uid] = captions_for(obj)
    variants.append(MeshObject("broken", root / "missing.obj", "nothing"))
    report = render_all(variants, root / "renders", RenderSettings(views=12, seed=0), workers=1, progress=False)
    assert (report.rendered, report.failed) == (len(OBJECTS) * RENDERS, 1)
    assert "missing.obj" in (root / "renders" / "failures.jsonl").read_text()
    pack(root / "renders", root / "data", splits=splits, captions=captions, progress=False)
    compute_targets(DataFolder(root / "data"), load_model(tiny_weights, device="cpu"), progress=False)
    return root / "data"


def _config(data_root: Path, weights: Path, out: Path, *overrides: str) -> TrainConfig:
    return TrainConfig.load(
        None,
        [
            f"data.root={data_root}",
            f"model.init_weights={weights}",
            "model.layers_threshold=0",
            "data.batch_size=6",
            "data.num_workers=0",
            "data.templates=simple",
            "optim.lr=2e-3",
            f"trainer.out_dir={out}",
            "trainer.log_every_n_steps=1",
            "trainer.progress_bar=false",
            "trainer.seed=7",
            *overrides,
        ],
    )


def _train_losses(out: Path) -> list[float]:
    metrics = next((out / "logs").rglob("metrics.csv"))
    with metrics.open() as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


# ---------------------------------------------------------------------------------------------- data


def test_render_is_resumable_and_real(data_root):
    renders = data_root.parent / "renders"
    again = render_all(
        [MeshObject("duck-r0", Path("unused"), "duck")], renders, RenderSettings(), workers=1, progress=False
    )
    assert (again.skipped, again.rendered) == (1, 0)
    meta = json.loads((renders / "duck-r0" / "meta.json").read_text())
    assert len(meta["cameras"]) == 12 and np.asarray(meta["cameras"][0]["world_to_camera"]).shape == (4, 4)
    with h5py.File(data_root / "mv_images.h5") as f:
        views = f["imgs"][0]
    assert views.shape == (12, 3, 224, 224) and views.dtype == np.uint8
    # White background around a visible, coloured object.
    assert (views[:, :, 0, 0] == 255).all()
    assert (views.reshape(12, 3, -1).std(axis=2) > 10).all()


def test_egl_renderer_draws_what_tinyrenderer_draws(data_root, tmp_path):
    """The GPU path (pybullet's OpenGL renderer over EGL; Mesa's llvmpipe here) sees the same object."""
    from PIL import Image

    catalogue = {obj.uid: obj for obj in pybullet_objects()}
    objects = [MeshObject(f"{uid}-r0", catalogue[uid].path, uid, uid, catalogue[uid].euler) for uid in ("duck", "mug")]
    # workers=2: spawned processes, so the EGL plugin never loads into this (TinyRenderer) process.
    report = render_all(objects, tmp_path, RenderSettings(renderer="egl"), workers=2, progress=False)
    if report.failed and "EGL renderer plugin could not be loaded" in (tmp_path / "failures.jsonl").read_text():
        pytest.skip("no EGL driver on this machine")
    assert report.rendered == 2
    for obj in objects:
        egl = np.asarray(Image.open(tmp_path / obj.uid / "views.png")) < 250
        tiny = np.asarray(Image.open(data_root.parent / "renders" / obj.uid / "views.png")) < 250
        egl, tiny = egl.any(axis=2), tiny.any(axis=2)
        assert (egl & tiny).sum() / (egl | tiny).sum() > 0.8  # same cameras, same silhouettes
    with pytest.raises(ValueError, match="renderer must be one of"):
        RenderSettings(renderer="blender")


def test_pack_layout_and_targets(data_root):
    data = DataFolder(data_root)
    assert data.num_objects == len(OBJECTS) * RENDERS and data.num_views == 12
    assert sorted(json.loads((data_root / "model_to_idx.json").read_text()).values()) == list(range(18))
    assert len(data.rows("val")) == len(OBJECTS) and data.categories() == ["ball", "mug", "rubber duck", "table"]
    with h5py.File(data_root / "image_embeddings.h5") as f:
        feats = f["img_feat"][:]
    assert feats.shape == (18, 12, 32)
    # Each target is plain CLIP of one view: the same as encoding that view alone.
    model = load_model(next(data_root.parent.parent.glob("tiny*/export")), device="cpu")
    with h5py.File(data_root / "mv_images.h5") as f:
        view = f["imgs"][3, 5]
    from ddclip_core import PreprocessConfig, Preprocessor

    pixels = Preprocessor(PreprocessConfig(crop_size=224)).from_uint8(torch.from_numpy(view[None]).permute(0, 2, 3, 1))
    expected = model.encode_views(pixels[None]).detach().numpy()[0]
    np.testing.assert_allclose(feats[3, 5], expected, atol=2e-3)
    with h5py.File(data_root / "text_embeddings.h5") as f:
        assert f["text_offsets"][-1] == len(f["text_feat"]) == 18 * 4


def test_published_layout_alone_is_a_data_folder(tmp_path):
    with h5py.File(tmp_path / "mv_images.h5", "w") as f:
        f.create_dataset("imgs", data=np.zeros((2, 12, 3, 224, 224), np.uint8))
    (tmp_path / "model_to_idx.json").write_text(json.dumps({"a": 0, "b": 1}))
    data = DataFolder(tmp_path)
    assert data.uids == ["a", "b"] and list(data.rows("train")) == [0, 1]
    (tmp_path / "model_to_idx.json").write_text(json.dumps({"a": 0, "b": 5}))
    with pytest.raises(DataError, match="outside"):
        DataFolder(tmp_path)


# ---------------------------------------------------------------------------------------------- loss


def test_loss_matches_hand_computation():
    shape = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    image = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    text = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    loss = ContrastiveLoss(lambda_image=1.0, lambda_text=0.5)
    out = loss(shape, image, text)
    s = math.exp(INIT_LOGIT_SCALE)  # 1 / 0.07
    r = 1 / math.sqrt(2)
    # cosine matrices: shape rows vs target rows
    cos_image = [[r, 0.0], [r, 1.0]]
    cos_text = [[1.0, r], [0.0, r]]

    def nce(cos):
        rows = sum(-math.log(math.exp(s * cos[i][i]) / sum(math.exp(s * c) for c in cos[i])) for i in range(2)) / 2
        cols = sum(
            -math.log(math.exp(s * cos[j][j]) / sum(math.exp(s * cos[i][j]) for i in range(2))) for j in range(2)
        )
        return (rows + cols / 2) / 2

    assert out["loss_image"].item() == pytest.approx(nce(cos_image), rel=1e-5)
    assert out["loss_text"].item() == pytest.approx(nce(cos_text), rel=1e-5)
    assert out["loss"].item() == pytest.approx(nce(cos_image) + 0.5 * nce(cos_text), rel=1e-5)
    assert loss.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    out["loss"].backward()
    assert loss.logit_scale.grad is not None
    assert info_nce(shape, shape, torch.tensor(1.0)).item() < info_nce(shape, shape.flip(0), torch.tensor(1.0))


def _gather_worker(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    data = np.load(f"{folder}/inputs.npz")
    mine = slice(rank * 3, (rank + 1) * 3)
    shape = torch.from_numpy(data["shape"][mine]).requires_grad_()
    out = ContrastiveLoss()(shape, torch.from_numpy(data["image"][mine]), torch.from_numpy(data["text"][mine]))
    out["loss"].backward()
    np.savez(f"{folder}/rank{rank}.npz", loss=out["loss"].item(), grad=shape.grad.numpy())
    dist.destroy_process_group()


def test_loss_gathers_across_processes_with_gradients(tmp_path):
    """Two real processes (gloo on loopback) see the whole batch as negatives, as one process would."""
    import socket

    import torch.multiprocessing as mp

    rng = np.random.default_rng(0)
    inputs = {name: rng.standard_normal((6, 8)).astype(np.float32) for name in ("shape", "image", "text")}
    np.savez(tmp_path / "inputs.npz", **inputs)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_gather_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    shape = torch.from_numpy(inputs["shape"]).requires_grad_()
    reference = ContrastiveLoss()(shape, torch.from_numpy(inputs["image"]), torch.from_numpy(inputs["text"]))
    reference["loss"].backward()
    for rank in range(2):
        result = np.load(tmp_path / f"rank{rank}.npz")
        assert float(result["loss"]) == pytest.approx(reference["loss"].item(), rel=1e-5)
        # Every rank's loss is the global one; the gather's backward sums them, so each rank holds
        # world x its rows' gradient, and DDP's averaging of parameter gradients gives back exactly 1x.
        np.testing.assert_allclose(result["grad"], 2 * shape.grad[rank * 3 : (rank + 1) * 3].numpy(), rtol=1e-4)


# ---------------------------------------------------------------------------------------------- training


def _fixed_loss(model, data_root: Path, logit_scale: float = INIT_LOGIT_SCALE) -> float:
    """Loss over every train object with views 0..5 (no randomness), for before/after comparisons."""
    from training.data import Item, MultiViewDataset, collate

    data = DataFolder(data_root)
    dataset = MultiViewDataset(data)
    batch = collate([dataset[Item(int(r), tuple(range(6)), 0.0)] for r in data.rows("train")])
    pixels = model.preprocessor.from_uint8(batch["pixels"].flatten(0, 1).permute(0, 2, 3, 1))
    with torch.no_grad():
        shape = model(pixels.unflatten(0, batch["pixels"].shape[:2]))
        loss = ContrastiveLoss(init_logit_scale=logit_scale)
        return loss(shape, batch["image_target"], batch["text_target"])["loss"].item()


def test_train_learns_checkpoint_loads_and_eval_reports(data_root, tiny_weights, tmp_path):
    out = tmp_path / "run"
    result = train(_config(data_root, tiny_weights, out, "trainer.max_epochs=20", "optim.lr=5e-3"))
    assert len(_train_losses(out)) == 40  # 12 train objects / batch 6 = 2 steps x 20 epochs
    # The checkpoint is the published layout and loads safely into ddclip_core.
    state = torch.load(result.last, map_location="cpu", weights_only=True)
    assert all(k.startswith("duoduoclip.") for k in state["state_dict"] if k != "contrastive_loss.logit_scale")
    assert state["hyper_parameters"]["ddclip_config"]["layers_threshold"] == 0
    trained = load_model(result.best or result.last, device="cpu")
    before = load_model(tiny_weights, device="cpu", layers_threshold=0)
    scale = state["state_dict"]["contrastive_loss.logit_scale"].item()
    # The last checkpoint (best follows val/top1 on a tiny val split: it may be an early epoch).
    after, start = _fixed_loss(load_model(result.last, device="cpu"), data_root, scale), _fixed_loss(before, data_root)
    print(f"loss on the train objects: {start:.3f} -> {after:.3f}")
    assert after < 0.92 * start  # 5.08 -> 4.47 when written
    assert load_model(result.export, device="cpu").weights_id == trained.weights_id
    assert {"val/top1", "val/top3"} <= set(result.metrics)

    zero_shot = evaluate_zero_shot(trained, DataFolder(data_root), views=(1, 3, 12), seeds=2, templates="simple")
    assert list(zero_shot.by_views) == [1, 3, 12] and zero_shot.baseline is not None
    files = write_report(zero_shot, tmp_path / "eval")
    assert all(f.stat().st_size > 0 for f in files) and files[-1].read_bytes()[:4] == b"\x89PNG"
    assert "| 12 |" in (tmp_path / "eval" / "zero_shot.md").read_text()
    retrieval = evaluate_retrieval(trained, DataFolder(data_root))
    assert retrieval["queries"] == 18 * 4 and 0 <= retrieval["recall@1"] <= retrieval["recall@10"] <= 100


def test_zero_shot_classes_are_every_class_of_the_labels(data_root, tiny_weights, tmp_path):
    data = DataFolder(data_root)
    labels = tmp_path / "labels.csv"
    rows = [f"{obj.uid},{obj.category}" for obj in data.objects if obj.category]
    labels.write_text("\n".join(["uid,category", *rows, "not-in-this-folder,unicorn"]) + "\n")
    model = load_model(tiny_weights, device="cpu")
    result = evaluate_zero_shot(model, data, labels=labels, views=(1,), seeds=1, templates="simple")
    assert "unicorn" in result.classes  # before: only the evaluated objects' classes, fewer distractors
    assert result.objects == len(rows)


def test_photo_folder_protocol(data_root, tiny_weights, tmp_path):
    """MVPNet-style folders: class/object/photos, fewer photos than asked means all of them."""
    from PIL import Image

    from training.evaluate import evaluate_photo_folders

    renders = data_root.parent / "renders"
    for uid, category in (("duck-r2", "rubber_duck"), ("mug-r2", "mug"), ("table-r2", "table")):
        strip = np.asarray(Image.open(renders / uid / "views.png"))
        folder = tmp_path / "photos" / category / uid
        folder.mkdir(parents=True)
        for i in range(8):  # 8 photos: asking for 12 takes all 8
            Image.fromarray(strip[i * 224 : (i + 1) * 224]).save(folder / f"{i:03d}.jpg")
    result = evaluate_photo_folders(load_model(tiny_weights, device="cpu"), tmp_path / "photos", seeds=2)
    assert result.classes == ["mug", "rubber duck", "table"] and result.objects == 3
    assert list(result.by_views) == [1, 6, 12]
    assert result.by_views[12]["top1_std"] == 0  # all 8 photos each time: no randomness left
    assert all(0 <= m["top1"] <= m["top3"] == 100 for m in result.by_views.values())
    with pytest.raises(DataError, match="no <class>/<object>/ folders"):
        evaluate_photo_folders(load_model(tiny_weights, device="cpu"), tmp_path / "photos" / "mug" / "mug-r2")


def test_gradient_reaches_only_the_attention_above_threshold(data_root, tiny_weights, tmp_path):
    from training.data import Item, MultiViewDataset, collate
    from training.module import DuoduoTraining

    config = _config(data_root, tiny_weights, tmp_path, "model.layers_threshold=2")
    model = load_model(tiny_weights, device="cpu", layers_threshold=2)
    module = DuoduoTraining(model, config)

    dataset = MultiViewDataset(DataFolder(data_root))
    batch = collate([dataset[Item(r, (0, 4, 8), 0.5)] for r in range(4)])
    loss = module.contrastive_loss(
        module.model(module._pixels(batch["pixels"], train=True)), batch["image_target"], batch["text_target"]
    )["loss"]
    loss.backward()
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    expected = {f"model.{n}" for n, _ in model.trainable_parameters(2)} | {"contrastive_loss.logit_scale"}
    assert with_grad == expected
    assert all(".attn." in n and int(n.split(".")[5]) >= 2 for n in with_grad if n.startswith("model."))


def test_two_process_ddp_training_on_cpu(data_root, tiny_weights, tmp_path):
    """Lightning DDP (2 spawned CPU processes, gloo): sharded batches, gathered loss, loadable checkpoints."""
    out = tmp_path / "ddp"
    overrides = ("trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn", "data.batch_size=3")
    result = train(_config(data_root, tiny_weights, out, "trainer.max_epochs=1", *overrides))
    assert len(_train_losses(out)) == 2  # 12 objects / (3 per rank x 2 ranks)
    assert result.last is not None and result.export is not None
    assert load_model(result.export, device="cpu").weights_id == load_model(result.last, device="cpu").weights_id


class _Interrupt(pl.Callback):
    """Stops a run after its first epoch, as a crash or a cluster time limit would."""

    def on_train_epoch_end(self, trainer, module) -> None:
        trainer.should_stop = True


class _Draws(pl.Callback):
    """What each training step drew: its view count and the sum of its image targets, per epoch."""

    def __init__(self) -> None:
        self.epochs: dict[int, list[tuple[int, float]]] = {}

    def on_train_batch_start(self, trainer, module, batch, index) -> None:
        drawn = (batch["pixels"].shape[1], round(float(batch["image_target"].sum()), 4))
        self.epochs.setdefault(trainer.current_epoch, []).append(drawn)


def test_resume_gives_the_same_next_step_and_each_epoch_draws_anew(data_root, tiny_weights, tmp_path):
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    draws = _Draws()
    train(_config(data_root, tiny_weights, straight, "trainer.max_epochs=2"), callbacks=[draws])
    assert draws.epochs[0] != draws.epochs[1]  # before: every epoch the same objects, view counts and views
    train(_config(data_root, tiny_weights, first, "trainer.max_epochs=2"), callbacks=[_Interrupt()])
    assert len(_train_losses(first)) == 2
    ckpt = first / "checkpoints" / "last.ckpt"
    train(_config(data_root, tiny_weights, resumed, "trainer.max_epochs=2", f"trainer.resume={ckpt}"))
    expected = _train_losses(straight)
    assert len(expected) == 4
    assert _train_losses(resumed) == pytest.approx(expected[2:], rel=1e-5)


def test_cli_commands_run_end_to_end(data_root, tiny_weights, tmp_path):
    from tests.cli_run import ddclip

    shown = ddclip("train", "training/configs/published.yaml", "data.batch_size=3", "--print-config")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["data"]["batch_size"] == 3
    bad = ddclip("train", "data.batchsize=3", "--print-config")
    assert bad.returncode == 2 and "unknown config key 'data.batchsize'" in bad.stderr
    missing = ddclip("data", "pack", str(tmp_path / "nothing"), str(tmp_path / "out"))
    assert missing.returncode == 2 and "no such folder of renders" in missing.stderr
    evaluated = ddclip(
        "eval", "lvis", str(data_root), "-w", str(tiny_weights), "--views", "1,12", "--seeds", "1",
        "--templates", "simple", "--split", "val", "--out", str(tmp_path / "eval"),
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert "| 12 |" in evaluated.stdout and (tmp_path / "eval" / "zero_shot_views.png").is_file()


def test_cli_help_lists_the_pipeline():
    from ddclip_cli import build_parser

    text = build_parser().format_help()
    for command in ("data", "train", "eval"):
        assert command in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "render", "--help"])
