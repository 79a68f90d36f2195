"""``ddclip data|train|eval``: data preparation, training and evaluation commands.

Registered into the ``ddclip`` command line (``ddclip_cli``); heavy imports (Lightning, pybullet) happen
inside the commands, so ``ddclip --help`` stays fast and a missing training dependency is an error of
the command that needs it, named, not a missing command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ddclip_core.cli_common import add_model_args, load_from_args, output_path, positive_int, positive_int_list
from ddclip_core.cluster import add_ray_argument


def cmd_render(args: argparse.Namespace) -> int:
    from .render import RenderSettings, find_meshes, render_all

    source = Path(args.meshes)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such folder of meshes")
    objects = find_meshes(source, up=args.up)
    if not objects:
        raise ValueError(f"{source}: no meshes (.glb .gltf .obj .ply .stl .urdf) found")
    settings = RenderSettings(views=args.views, seed=args.seed, depth=args.depth, renderer=args.renderer)
    if args.ray:
        from ddclip_core.cluster import connect

        from .ray_render import render_all_ray

        connect(args.ray)
        report = render_all_ray(objects, Path(args.out), settings)
    else:
        report = render_all(objects, Path(args.out), settings, workers=args.workers)
    print(report)
    if report.failed and not (report.rendered or report.skipped):  # nothing to show for the run
        where = Path(args.out) / "failures.jsonl"
        print(f"ddclip data render: error: all {report.failed} object(s) failed (reasons: {where})", file=sys.stderr)
        return 2
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from .pack import pack, read_captions

    captions = read_captions(Path(args.captions)) if args.captions else None
    options = {"captions": captions, "val_fraction": args.val_fraction, "seed": args.seed}
    if args.ray:
        from ddclip_core.cluster import connect

        from .ray_pack import pack_ray

        connect(args.ray)
        count = pack_ray(Path(args.renders), Path(args.out), **options)
    else:
        count = pack(Path(args.renders), Path(args.out), **options)
    print(f"packed {count} objects into {args.out}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from .layout import DataFolder
    from .targets import compute_targets

    data = DataFolder(args.data)
    if args.ray:
        from ddclip_core.cluster import ModelSpec, connect

        from .ray_targets import compute_targets_ray

        spec = ModelSpec.from_args(args)
        connect(args.ray)
        views, captions = compute_targets_ray(data, spec, templates=args.templates, batch_size=args.batch_size)
    else:
        model = load_from_args(args)
        views, captions = compute_targets(data, model, templates=args.templates, batch_size=args.batch_size)
    print(f"wrote targets for {data.num_objects} objects: {views} view and {captions} caption embeddings")
    return 0


def cmd_demo_set(args: argparse.Namespace) -> int:
    from .demo_set import make_demo_set

    report = make_demo_set(
        Path(args.out),
        load_from_args(args),
        renders=args.renders,
        robosuite=args.robosuite,
        workers=args.workers,
        gaussians=args.gaussians,
    )
    print(
        f"{report.objects} objects x {args.renders} renders: {report.renders}; packed {report.packed} "
        f"({report.categories} categories) into {report.data}"
    )
    return 0


def cmd_gaussians(args: argparse.Namespace) -> int:
    from .gaussian_data import FuseSettings, write_gaussians
    from .layout import DataFolder

    settings = FuseSettings(max_points=args.points, voxel_fraction=args.voxel, seed=args.seed)
    meshes = None
    if args.source == "mesh":
        if args.ray:
            raise ValueError("--ray lifts RGB-D renders (--source rgbd); --source mesh runs on this machine")
        from .gaussian_mesh import mesh_objects

        meshes = mesh_objects(Path(args.meshes) if args.meshes else None, Path(args.renders) if args.renders else None)
    elif not args.renders:
        raise ValueError("--source rgbd needs --renders (the renders with depth.npz)")
    if args.ray:
        from ddclip_core.cluster import connect

        from .ray_gaussians import write_gaussians_ray

        connect(args.ray)
        path = write_gaussians_ray(DataFolder(args.data), Path(args.renders), settings)
    else:
        path = write_gaussians(DataFolder(args.data), Path(args.renders) if args.renders else None, settings,
                               meshes=meshes)  # fmt: skip
    print(f"wrote {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .train import train

    config_file, overrides = args.config, list(args.overrides)
    if config_file and "=" in config_file and not Path(config_file).exists():  # no file given, only overrides
        config_file, overrides = None, [config_file, *overrides]
    config = TrainConfig.load(config_file, overrides)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    result = train(config)
    shown = {k: round(v, 4) for k, v in sorted(result.metrics.items()) if not k.startswith("lr-")}
    print(json.dumps({"best": str(result.best), "last": str(result.last), "export": str(result.export), **shown}))
    return 0


def cmd_eval_lvis(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_zero_shot, write_report
    from .layout import DataFolder

    views = args.views
    result = evaluate_zero_shot(
        load_from_args(args),
        DataFolder(args.data),
        labels=args.labels,
        split=args.split,
        views=views,
        seeds=args.seeds,
        templates=args.templates,
    )
    files = write_report(result, Path(args.out))
    print(result.markdown())
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _weights(text: str) -> list[float]:
    """'0.25,0.5' -> [0.25, 0.5] (named so that argparse says 'invalid _weights value' on a typo)."""
    return [float(w) for w in text.split(",") if w.strip()]


def cmd_eval_gaussians(args: argparse.Namespace) -> int:
    from ddclip_core.gaussians import load_gs_encoder

    from .gaussian_eval import evaluate_gaussians, write_gaussian_report
    from .layout import DataFolder

    result = evaluate_gaussians(
        load_gs_encoder(args.encoder),
        DataFolder(args.data),
        load_from_args(args),
        split=None if args.split == "all" else args.split,
        templates=args.templates,
        multiview=not args.no_multiview,
        fusion_weights=args.fusion_weights,
        partial_views=args.partial,
    )
    files = write_gaussian_report(result, Path(args.out))
    print(result.markdown())
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_retrieval
    from .layout import DataFolder

    print(json.dumps(evaluate_retrieval(load_from_args(args), DataFolder(args.data), split=args.split)))
    return 0


def cmd_eval_photos(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_photo_folders, write_report

    views = args.views
    result = evaluate_photo_folders(load_from_args(args), Path(args.folder), views=views, seeds=args.seeds)
    files = write_report(result, Path(args.out), title=f"{Path(args.folder).name}: real multi-view photos")
    print(result.markdown())
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def register(commands: Any) -> None:
    """Add the data, train and eval commands to the ``ddclip`` parser."""
    data = commands.add_parser("data", help="prepare training data: render, pack, targets, demo-set")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    render = actions.add_parser(
        "render",
        help="render meshes to 12 views on white (pybullet TinyRenderer, CPU)",
        description="Render every mesh (GLB/GLTF/OBJ/PLY/STL/URDF) under a folder to views on white, cameras "
        "random on a sphere. Resumable: finished objects are skipped. Failures go to OUT/failures.jsonl.",
    )
    render.add_argument("meshes", help="folder of meshes (searched recursively)")
    render.add_argument("out", type=output_path, help="output folder: OUT/<uid>/views.png + meta.json")
    render.add_argument("--views", type=positive_int, default=12, help="views per object (default: 12)")
    render.add_argument("--workers", type=positive_int, default=2, help="parallel render processes (default: 2)")
    render.add_argument("--seed", type=int, default=0, help="camera seed (default: 0)")
    render.add_argument("--up", default="auto", choices=["auto", "y", "z"], help="up axis of the meshes")
    render.add_argument("--depth", action="store_true", help="also write depth.npz (for `ddclip data gaussians`)")
    render.add_argument(
        "--renderer",
        default="tiny",
        choices=["tiny", "egl"],
        help="tiny: TinyRenderer on CPU (default); egl: pybullet's OpenGL renderer over EGL, for GPU machines",
    )
    add_ray_argument(render)
    render.set_defaults(func=cmd_render)

    pack = actions.add_parser(
        "pack",
        help="pack renders into mv_images.h5 + model_to_idx.json (the published layout)",
        description="Pack rendered objects into the published layout, with objects.csv (name, category, split).",
    )
    pack.add_argument("renders", help="folder written by `ddclip data render`")
    pack.add_argument("out", type=output_path, help="data folder to write")
    pack.add_argument("--captions", metavar="FILE", help="captions: JSON {uid: [captions]} or CSV uid,caption")
    pack.add_argument("--val-fraction", type=float, default=0.0, help="fraction of objects held out (default: 0)")
    pack.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    add_ray_argument(pack)
    pack.set_defaults(func=cmd_pack)

    targets = actions.add_parser(
        "targets",
        help="frozen CLIP embeddings of every view and caption (image_embeddings.h5, text_embeddings.h5)",
        description="Compute the training targets with a frozen CLIP (--weights: the OpenCLIP ViT-B-32 file). "
        "Objects without captions are captioned from their category with prompt templates.",
    )
    targets.add_argument("data", help="data folder (mv_images.h5 + model_to_idx.json)")
    targets.add_argument("--templates", default="simple", help="templates for category captions (default: simple)")
    targets.add_argument("--batch-size", type=positive_int, default=32, help="objects per forward pass (default: 32)")
    add_model_args(targets)
    add_ray_argument(targets)
    targets.set_defaults(func=cmd_targets)

    demo = actions.add_parser(
        "demo-set",
        help="the real small data set: pybullet_data (+ robosuite) objects rendered, packed, with targets",
        description="Render every named object of pybullet_data (and robosuite's, given its wheel or an "
        "installed robosuite) RENDERS times, pack them (last render of each object = val split), caption "
        "them from their names and compute targets.",
    )
    demo.add_argument("out", type=output_path, help="output folder (OUT/renders, OUT/data)")
    demo.add_argument("--renders", type=positive_int, default=3, help="renders per object (default: 3)")
    demo.add_argument(
        "--robosuite", metavar="WHEEL_OR_DIR", help="robosuite wheel (pip download --no-deps robosuite) or folder"
    )
    demo.add_argument("--workers", type=positive_int, default=2, help="parallel render processes (default: 2)")
    demo.add_argument("--gaussians", action="store_true", help="also render depth and write gaussians.h5 (GS-CLIP)")
    add_model_args(demo)
    demo.set_defaults(func=cmd_demo_set)

    gaussians = actions.add_parser(
        "gaussians",
        help="lift rendered objects to Gaussians for GS-CLIP (gaussians.h5, aligned with the data folder)",
        description="Back-project each object's depth renders (render with --depth) with their cameras, fuse "
        "the views, average on a voxel grid, keep at most --points points and lift them to Gaussians.",
    )
    gaussians.add_argument("data", help="data folder (packed from RENDERS)")
    gaussians.add_argument("--renders", help="folder of renders (with depth.npz per object for --source rgbd)")
    gaussians.add_argument(
        "--source",
        default="rgbd",
        choices=["rgbd", "mesh"],
        help="rgbd: fuse the depth renders (default); mesh: sample points on each mesh's surface, coloured "
        "from its texture (meshes from --meshes, named as `ddclip data render` names them, or from the renders)",
    )
    gaussians.add_argument("--meshes", help="with --source mesh: the folder of meshes the data was made from")
    gaussians.add_argument("--points", type=int, default=4096, help="Gaussians per object at most (default: 4096)")
    gaussians.add_argument("--voxel", type=float, default=1 / 128, help="voxel edge / bbox diagonal (default: 1/128)")
    gaussians.add_argument("--seed", type=int, default=0, help="seed of the point subset (default: 0)")
    add_ray_argument(gaussians)
    gaussians.set_defaults(func=cmd_gaussians)

    train = commands.add_parser(
        "train",
        help="fine-tune Duoduo CLIP (PyTorch Lightning; multi-GPU and multi-node)",
        description="Train from a YAML config (see training/configs/) with section.key=value overrides, e.g. "
        "`ddclip train training/configs/published.yaml data.root=DATA trainer.devices=4`.",
    )
    train.add_argument("config", nargs="?", help="YAML config (default: built-in defaults)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-4 data.batch_size=64")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="zero-shot evaluation: lvis protocol, retrieval, photos")
    kinds = evaluate.add_subparsers(dest="eval_command", metavar="KIND", required=True)
    lvis = kinds.add_parser(
        "lvis",
        help="Objaverse-LVIS protocol on a data folder: views 1..12, 3 seeds, top-1/3/5, plain-CLIP baseline",
        description="Zero-shot classification of the objects of a data folder; writes zero_shot.json, .md and a "
        "PNG plot of accuracy against the number of views.",
    )
    lvis.add_argument("data", help="data folder")
    lvis.add_argument("--labels", help="CSV with uid and name/category columns (LVIS lvis.csv); default objects.csv")
    lvis.add_argument("--split", help="only objects of this split (train/val/test); default: all labelled")
    lvis.add_argument(
        "--views",
        type=positive_int_list,
        default="1,2,3,4,5,6,8,10,12",
        help="view counts (default: 1,2,3,4,5,6,8,10,12)",
    )
    lvis.add_argument("--seeds", type=positive_int, default=3, help="random view subsets per count (default: 3)")
    lvis.add_argument("--templates", default="openai", help="prompt templates (default: openai, 80 prompts)")
    lvis.add_argument("--out", default="eval", help="output folder (default: eval)")
    add_model_args(lvis)
    lvis.set_defaults(func=cmd_eval_lvis)

    gs = kinds.add_parser(
        "gaussians",
        help="GS-CLIP zero-shot top-1 per class and class mean, next to Duoduo CLIP (--weights) on the same objects",
        description="Zero-shot classification of the objects' Gaussians (gaussians.h5) by a trained GS encoder, "
        "with Duoduo CLIP on all views of the same objects and plain CLIP; writes gaussians_zero_shot.json/.md.",
    )
    gs.add_argument("data", help="data folder with gaussians.h5")
    gs.add_argument("--encoder", required=True, help="GS encoder (.safetensors from save_gs_encoder / ddclip train)")
    gs.add_argument("--split", default="val", help="train, val, test or all (default: val)")
    gs.add_argument("--templates", default="openai", help="prompt templates (default: openai)")
    gs.add_argument("--no-multiview", action="store_true", help="skip the Duoduo CLIP row (text tower only)")
    gs.add_argument(
        "--fusion-weights",
        type=_weights,
        default=[],
        help="also rows of Duoduo + GS fused embeddings at these Gaussian weights in [0, 1], e.g. 0.25,0.5,0.75",
    )
    gs.add_argument("--partial", type=int, default=0, metavar="VIEWS",
                    help="the partial clouds made from VIEWS views (1 or 3) instead of the full ones")  # fmt: skip
    gs.add_argument("--out", default="eval", help="output folder (default: eval)")
    add_model_args(gs)
    gs.set_defaults(func=cmd_eval_gaussians)

    retrieval = kinds.add_parser("retrieval", help="text-to-shape recall@1/5/10 from per-object captions")
    retrieval.add_argument("data", help="data folder with captions.json")
    retrieval.add_argument("--split", help="only objects of this split")
    add_model_args(retrieval)
    retrieval.set_defaults(func=cmd_eval_retrieval)

    photos = kinds.add_parser(
        "photos", help="MVPNet-style zero-shot on FOLDER/<class>/<object>/*.jpg real multi-view photos"
    )
    photos.add_argument("folder", help="folder of class folders of object folders of photos")
    photos.add_argument("--views", type=positive_int_list, default="1,6,12", help="view counts (default: 1,6,12)")
    photos.add_argument("--seeds", type=positive_int, default=3, help="random view subsets per count (default: 3)")
    photos.add_argument("--out", default="eval", help="output folder (default: eval)")
    add_model_args(photos)
    photos.set_defaults(func=cmd_eval_photos)
