"""Render the shipped example objects (ddclip_core/assets/*.jpg) from the real small data set.

The objects are four of `ddclip data demo-set`'s (pybullet_data meshes), rendered by the training
pipeline's renderer (training/render.py: 12 views at 224 x 224 on white, cameras random on the sphere
as the published renders). Run once by maintainers; the outputs are committed, so users never run it.

    python scripts/make_example_views.py ddclip_core/assets
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from training.catalog import pybullet_objects
from training.render import RenderSettings, render_object

LABELS = {  # asset name (a demo-set uid): label shown by the demos
    "duck": "a rubber duck",
    "teddy": "a teddy bear",
    "mug": "a red mug",
    "soccerball": "a soccer ball",
}


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    catalogue = {obj.uid: obj for obj in pybullet_objects()}
    settings = RenderSettings(views=12, seed=0)
    lines = []
    for uid, label in LABELS.items():
        views, _, _ = render_object(catalogue[uid], settings)
        Image.fromarray(np.concatenate(list(views), axis=0)).save(folder / f"{uid}.jpg", quality=90)
        lines.append(f"{uid}.jpg\t{label}")
    (folder / "examples.tsv").write_text("file\tlabel\n" + "\n".join(lines) + "\n")
    print(f"wrote {len(LABELS)} strips of {settings.views} views to {folder}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ddclip_core/assets")
