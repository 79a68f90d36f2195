"""Learning for real: train on the real small data set, report held-out zero-shot accuracy vs views.

    python benchmarks/learning.py --out /tmp/ddclip-learning                 # tiny CLIP-shaped model, CPU
    python benchmarks/learning.py --out /tmp/l --arch ViT-B-32 --epochs 30 --device gpu
    python benchmarks/learning.py --out /tmp/l --robosuite robosuite-1.5.2-py3-none-any.whl

Steps (each resumable through the output folder): `ddclip data demo-set` (every named object of
pybullet_data, and robosuite's with its wheel, rendered 3 times; the last render of each is held out),
targets from the frozen starting model, Lightning training, then the Objaverse-LVIS protocol on the
held-out renders (views 1..12, 3 seeds) for the starting model and the trained one, with chance.
No pretrained weights exist here, so the starting model is randomly initialised: the figures show
that the pipeline learns, not what the published model reaches.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from ddclip_core import DuoduoCLIP, DuoduoConfig, load_model, save_export
from training.config import TrainConfig
from training.demo_set import make_demo_set
from training.evaluate import evaluate_zero_shot, write_report
from training.layout import DataFolder
from training.train import train

TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 6, "width": 128, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}


def start_model(arch: str, out: Path) -> Path:
    path = out / "start"
    if not (path / "model.safetensors").is_file():
        torch.manual_seed(0)
        config = DuoduoConfig(arch="tiny", clip_cfg=TINY) if arch == "tiny" else DuoduoConfig.from_arch(arch)
        save_export(DuoduoCLIP(config), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", default="tiny", help="tiny (CPU-sized) or an open_clip name, e.g. ViT-B-32")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--layers-threshold", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--robosuite", help="robosuite wheel or folder, for its objects")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = start_model(args.arch, out)
    device = "cuda" if args.device == "gpu" else "cpu"

    start = time.perf_counter()
    data_report = make_demo_set(out, load_model(weights, device=device), robosuite=args.robosuite, progress=False)
    print(
        f"data: {data_report.objects} objects, {data_report.packed} renders, {data_report.categories} categories, "
        f"{data_report.renders} ({time.perf_counter() - start:.0f} s)",
        flush=True,
    )

    config = TrainConfig.load(
        None,
        [
            f"data.root={data_report.data}",
            f"model.init_weights={weights}",
            f"model.layers_threshold={args.layers_threshold}",
            f"data.batch_size={args.batch_size}",
            "data.num_workers=2",
            "data.templates=simple",
            f"optim.lr={args.lr}",
            f"trainer.max_epochs={args.epochs}",
            f"trainer.accelerator={args.device}",
            "trainer.devices=1",
            f"trainer.out_dir={out / 'run'}",
            "trainer.progress_bar=false",
            "trainer.log_every_n_steps=5",
        ],
    )
    start = time.perf_counter()
    result = train(config)
    print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s; best {result.best}", flush=True)

    data = DataFolder(data_report.data)
    report = {}
    for name, path in (("start", weights), ("trained", result.best or result.last)):
        model = load_model(path, device=device, layers_threshold=args.layers_threshold)
        zero_shot = evaluate_zero_shot(model, data, split="val", seeds=args.seeds, templates="simple")
        write_report(zero_shot, out / f"eval-{name}", title=f"{name}: held-out renders of the real small data set")
        report[name] = zero_shot.to_json()
        print(f"\n{name} model, held-out renders:\n{zero_shot.markdown()}", flush=True)
    (out / "learning.json").write_text(json.dumps(report, indent=1))
    print(f"curve: {out / 'eval-trained' / 'zero_shot_views.png'}")


if __name__ == "__main__":
    main()
