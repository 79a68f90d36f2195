"""Render the shipped example objects (ddclip_core/assets/*.jpg) from pybullet_data meshes.

Each asset is a vertical strip of 12 views at 224 x 224 on white, cameras on a sphere around the
object (azimuth every 30 degrees, random elevation and radius), like the published renders. Run
once by maintainers (needs `pip install pybullet`); the outputs are committed, so users never run it.

    python scripts/make_example_views.py ddclip_core/assets
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pybullet as p
import pybullet_data
from PIL import Image

OBJECTS = {  # asset name: (URDF in pybullet_data, orientation as Euler angles, label)
    "duck": ("duck_vhacd.urdf", (math.pi / 2, 0, 0), "a rubber duck"),
    "teddy": ("teddy_vhacd.urdf", (math.pi / 2, 0, 0), "a teddy bear"),
    "mug": ("objects/mug.urdf", (0, 0, 0), "a red mug"),
    "soccerball": ("soccerball.urdf", (0, 0, 0), "a soccer ball"),
}
SIZE, VIEWS = 224, 12


def render_object(urdf: str, euler: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    p.resetSimulation()
    body = p.loadURDF(urdf, baseOrientation=p.getQuaternionFromEuler(euler), useFixedBase=True)
    low, high = (np.array(v) for v in p.getAABB(body))
    centre, radius = (low + high) / 2, float(np.linalg.norm(high - low)) / 2
    projection = p.computeProjectionMatrixFOV(fov=40, aspect=1.0, nearVal=radius * 0.05, farVal=radius * 20)
    views = []
    for i in range(VIEWS):
        azimuth = math.radians(30 * i + rng.uniform(-10, 10))
        elevation = math.radians(rng.uniform(5, 40))
        distance = radius * rng.uniform(2.1, 2.6)
        eye = centre + distance * np.array(
            [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
        )
        view = p.computeViewMatrix(eye.tolist(), centre.tolist(), [0, 0, 1])
        _, _, rgba, _, seg = p.getCameraImage(SIZE, SIZE, view, projection, renderer=p.ER_TINY_RENDERER)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(SIZE, SIZE, 4)[:, :, :3].copy()
        rgb[np.asarray(seg).reshape(SIZE, SIZE) < 0] = 255  # white background, as the published renders
        views.append(rgb)
    return np.concatenate(views, axis=0)


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    p.connect(p.DIRECT)
    p.setAdditionalSearchPath(pybullet_data.getDataPath())
    rng = np.random.default_rng(0)
    lines = []
    for name, (urdf, euler, label) in OBJECTS.items():
        strip = render_object(urdf, euler, rng)
        Image.fromarray(strip).save(folder / f"{name}.jpg", quality=90)
        lines.append(f"{name}.jpg\t{label}")
    (folder / "examples.tsv").write_text("file\tlabel\n" + "\n".join(lines) + "\n")
    print(f"wrote {len(OBJECTS)} strips of {VIEWS} views to {folder}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ddclip_core/assets")
