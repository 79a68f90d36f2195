"""Fusion measured: multi-view (Duoduo CLIP) vs Gaussian (GS-CLIP) vs fused embeddings, on held-out renders.

    python benchmarks/fusion.py --out /tmp/ddclip-fusion   # ~23 min on 2 idle CPU cores (40 min on 2 shared ones)
    python benchmarks/fusion.py --out /tmp/f --epochs 30 --seeds 3 --device gpu

The real small data set (`ddclip data demo-set --gaussians`: the named pybullet objects, 3 renders
each with depth, the last render of each object held out), frozen targets from one randomly
initialised small CLIP-shaped model (as benchmarks/learning.py; no pretrained weights here). Per seed,
the multi-view model and the GS encoder ("small" preset, half of its draws partial clouds) are trained
against those same targets with the same epochs, batch size and learning rate. Then, per held-out
object and view count k (a random subset of k of its 12 views, drawn per seed):
    views only      the multi-view model on the k views
    cloud only      the GS encoder on the object's cloud: "full" = the depth of all 12 views fused,
                    "partial" = the depth of the same k views only (what an RGB-D robot has after k views)
    fused w         ddclip_core.fusion.fuse_embeddings(views, cloud, w)
Every cloud goes through prepare_cloud with the encoder's own settings. Zero-shot top-1 against the
class prompts embedded by the frozen CLIP's text tower (the space both were trained into), mean and
standard deviation over the seeds, and chance. Figures are for random-init models trained on ~60
renders: they measure what the fusion does on this data, not what published weights reach.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from learning import start_model

from ddclip_core import LabelSet, load_model
from ddclip_core.fusion import fuse_embeddings
from ddclip_core.gaussians import GSCLIPEncoder, load_gs_encoder
from training.config import TrainConfig
from training.demo_set import make_demo_set
from training.gaussian_data import FuseSettings, cloud_features, fuse_views, read_render
from training.layout import DataFolder
from training.train import train

VIEWS = (1, 3, 12)
WEIGHTS = (0.25, 0.5, 0.75)


def common(args: argparse.Namespace, data: Path, weights: Path, seed: int, out: Path) -> list[str]:
    return [
        f"data.root={data}",
        f"model.init_weights={weights}",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=0",
        "data.templates=simple",
        f"optim.lr={args.lr}",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.val_every_n_epochs={args.epochs}",  # validated once, at the end: both keep their last weights
        f"trainer.accelerator={args.device}",
        "trainer.devices=1",
        f"trainer.seed={seed}",
        f"trainer.out_dir={out}",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=5",
    ]


def train_both(args: argparse.Namespace, data: Path, weights: Path, seed: int, out: Path) -> tuple[Path, Path, dict]:
    """(multi-view checkpoint, GS encoder export, seconds of each training)."""
    seconds = {}
    start = time.perf_counter()
    mv_overrides = [*common(args, data, weights, seed, out / f"mv-{seed}"), "model.layers_threshold=0"]
    mv = train(TrainConfig.load(None, mv_overrides))
    seconds["multi-view"] = time.perf_counter() - start
    start = time.perf_counter()
    gs_overrides = [
        *common(args, data, weights, seed, out / f"gs-{seed}"),
        "model.kind=gaussian",
        "gaussian.preset=small",
        f"gaussian.points={args.points}",
        f"gaussian.partial_fraction={args.partial_fraction}",
        "loss.lambda_image=0.5",
        "loss.lambda_text=0.5",
    ]
    gs = train(TrainConfig.load(None, gs_overrides))
    seconds["Gaussian"] = time.perf_counter() - start
    return mv.last, gs.export, seconds


def held_out_embeddings(model, encoder: GSCLIPEncoder, renders: Path, uids: list[str], seed: int) -> dict:
    """{(k, "views" | "full" | "partial"): (objects, D) embeddings} for the held-out objects."""
    cloud = encoder.config.cloud
    settings = FuseSettings(max_points=cloud.max_points, voxel_fraction=cloud.voxel_fraction)
    out: dict = {}
    full_features = []
    per_k: dict[int, tuple[list, list]] = {k: ([], []) for k in VIEWS}
    for row, uid in enumerate(uids):
        views, depth, meta = read_render(renders / uid)
        points, colours = fuse_views(views, depth, meta["cameras"])
        full_features.append(cloud_features(points, colours, settings, [seed, row])[0])
        for k in VIEWS:
            chosen = np.sort(np.random.default_rng([seed, row, k]).choice(len(views), k, replace=False))
            points, colours = fuse_views(views[chosen], depth[chosen], [meta["cameras"][i] for i in chosen])
            per_k[k][0].append(views[chosen])
            per_k[k][1].append(cloud_features(points, colours, settings, [seed, row, k])[0])
    full = encoder.encode(full_features).cpu()
    for k, (view_sets, partial) in per_k.items():
        out[k, "views"] = model.encode_views(view_sets).cpu()
        out[k, "full"] = full
        out[k, "partial"] = encoder.encode(partial).cpu()
    return out


def top1(embeddings: torch.Tensor, text: torch.Tensor, target: torch.Tensor) -> float:
    scores = torch.nn.functional.normalize(torch.as_tensor(embeddings).float(), dim=-1) @ text.T
    return float((scores.argmax(1) == target).float().mean() * 100)


def score(embedded: dict, text: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """{'k=1 full views only': top-1, ...} for one seed."""
    out = {}
    for k in VIEWS:
        for cloud in ("full", "partial"):
            if k == 12 and cloud == "partial":
                continue  # the depth of all 12 views is the full cloud
            mv, gs = embedded[k, "views"], embedded[k, cloud]
            row = f"{k:>2} views, {cloud} cloud"
            out[f"{row}|views only"] = top1(mv, text, target)
            out[f"{row}|cloud only"] = top1(gs, text, target)
            for w in WEIGHTS:
                out[f"{row}|fused w={w:g}"] = top1(fuse_embeddings(mv, gs, w), text, target)
    return out


def table(runs: list[dict[str, float]], chance: float) -> str:
    columns = ["views only", "cloud only", *(f"fused w={w:g}" for w in WEIGHTS)]
    rows = list(dict.fromkeys(key.split("|")[0] for key in runs[0]))
    lines = [
        f"Held-out zero-shot top-1 (%), mean +- std over {len(runs)} seeds (chance {chance:.1f}%)",
        "",
        "| views, cloud | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = []
        for column in columns:
            values = [run[f"{row}|{column}"] for run in runs]
            cells.append(f"{np.mean(values):.1f} +- {np.std(values):.1f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--points", type=int, default=1024, help="Gaussians per cloud (default: 1024)")
    parser.add_argument("--partial-fraction", type=float, default=0.5, help="share of partial clouds in GS training")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = start_model("tiny", out)
    device = "cuda" if args.device == "gpu" else "cpu"
    frozen = load_model(weights, device=device)

    start = time.perf_counter()
    report = make_demo_set(out, frozen, gaussians=True, workers=1, progress=False)
    data = DataFolder(report.data)
    rows = [r for r in data.rows("val") if data.objects[r].category]
    uids = [data.uids[r] for r in rows]
    classes = sorted({data.objects[r].category for r in rows})
    target = torch.tensor([classes.index(data.objects[r].category) for r in rows])
    text = torch.from_numpy(LabelSet(classes, templates="simple").embeddings(frozen, cache=False)).float()
    print(f"data: {report.objects} objects x 3 renders, {len(rows)} held out, {len(classes)} classes "
          f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip

    runs, seconds = [], []
    for seed in range(args.seeds):
        mv_path, gs_path, took = train_both(args, report.data, weights, seed, out / "runs")
        seconds.append(took)
        model = load_model(mv_path, device=device, layers_threshold=0)
        embedded = held_out_embeddings(model, load_gs_encoder(gs_path, device=device), out / "renders", uids, seed)
        runs.append(score(embedded, text, target))
        print(f"seed {seed}: trained multi-view {took['multi-view']:.0f} s, Gaussian {took['Gaussian']:.0f} s",
              flush=True)  # fmt: skip
    result = table(runs, 100 / len(classes))
    print("\n" + result)
    (out / "fusion.md").write_text(result + "\n")
    (out / "fusion.json").write_text(json.dumps({"runs": runs, "train_seconds": seconds, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
