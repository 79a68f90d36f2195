"""Named real objects shipped in registry packages: pybullet_data, and robosuite's object assets.

robosuite is large and pulls MuJoCo; only its meshes and textures are needed, so besides an
installed robosuite this also reads a downloaded wheel (``pip download --no-deps robosuite``).
"""

from __future__ import annotations

import importlib.util
import math
import zipfile
from pathlib import Path

from .render import MeshObject

Y_UP = (math.pi / 2, 0.0, 0.0)

# uid: (path in pybullet_data, category, name, euler). Several categories have more than one
# object so that held-out objects can be named from categories seen in training.
PYBULLET_OBJECTS: dict[str, tuple[str, str, str, tuple[float, float, float]]] = {
    "duck": ("duck_vhacd.urdf", "rubber duck", "a yellow rubber duck", Y_UP),
    "teddy": ("teddy_vhacd.urdf", "teddy bear", "a teddy bear", Y_UP),
    "mug": ("objects/mug.urdf", "mug", "a red mug", (0.0, 0.0, 0.0)),
    "soccerball": ("soccerball.urdf", "ball", "a soccer ball", (0.0, 0.0, 0.0)),
    "sphere_red": ("sphere2red.urdf", "ball", "a red ball", (0.0, 0.0, 0.0)),
    "textured_sphere": ("textured_sphere_smooth.obj", "ball", "a textured ball", (0.0, 0.0, 0.0)),
    "table": ("table/table.urdf", "table", "a wooden table", (0.0, 0.0, 0.0)),
    "table_square": ("table_square/table_square.urdf", "table", "a square table", (0.0, 0.0, 0.0)),
    "lego": ("lego/lego.urdf", "toy brick", "a lego brick", (0.0, 0.0, 0.0)),
    "jenga": ("jenga/jenga.urdf", "toy brick", "a jenga block", (0.0, 0.0, 0.0)),
    "domino": ("domino/domino.urdf", "toy brick", "a domino", (0.0, 0.0, 0.0)),
    "tray": ("tray/traybox.urdf", "tray", "a tray", (0.0, 0.0, 0.0)),
    "stone": ("stone.obj", "stone", "a stone", (0.0, 0.0, 0.0)),
    "bunny": ("bunny.obj", "bunny", "a bunny figurine", Y_UP),
    "cube": ("cube.urdf", "cube", "a cube", (0.0, 0.0, 0.0)),
    "torus": ("torus/torus_textured.obj", "torus", "a torus", (0.0, 0.0, 0.0)),
    "shape_sorter": ("toys/shape_sorter.obj", "toy", "a shape sorter toy", (0.0, 0.0, 0.0)),
    "concave_box": ("toys/concave_box.obj", "box", "an open box", (0.0, 0.0, 0.0)),
    "r2d2": ("r2d2.urdf", "robot", "the r2d2 robot", (0.0, 0.0, 0.0)),
    "racecar": ("racecar/racecar.urdf", "car", "a toy race car", (0.0, 0.0, 0.0)),
    "husky": ("husky/husky.urdf", "car", "a husky wheeled robot", (0.0, 0.0, 0.0)),
    "bicycle": ("bicycle/bike.urdf", "bicycle", "a bicycle", (0.0, 0.0, 0.0)),
    "kuka": ("kuka_iiwa/model.urdf", "robot arm", "a kuka robot arm", (0.0, 0.0, 0.0)),
    "panda": ("franka_panda/panda.urdf", "robot arm", "a franka panda robot arm", (0.0, 0.0, 0.0)),
    "xarm": ("xarm/xarm6_robot.urdf", "robot arm", "an xarm robot arm", (0.0, 0.0, 0.0)),
    "laikago": ("laikago/laikago_toes_zup.urdf", "legged robot", "a laikago quadruped robot", (0.0, 0.0, 0.0)),
    "a1": ("a1/a1.urdf", "legged robot", "a unitree a1 quadruped robot", (0.0, 0.0, 0.0)),
    "minitaur": ("quadruped/minitaur.urdf", "legged robot", "a minitaur legged robot", (0.0, 0.0, 0.0)),
    "mini_cheetah": ("mini_cheetah/mini_cheetah.urdf", "legged robot", "a mini cheetah robot", (0.0, 0.0, 0.0)),
    "humanoid": ("humanoid/humanoid.urdf", "humanoid", "a humanoid figure", (0.0, 0.0, 0.0)),
}

# robosuite object meshes and the texture their MuJoCo XML assigns them.
ROBOSUITE_OBJECTS: dict[str, tuple[str, str, str, str]] = {
    "rs_bottle": ("bottle.obj", "glass.png", "bottle", "a green glass bottle"),
    "rs_bread": ("bread.obj", "bread.png", "bread", "a loaf of bread"),
    "rs_can": ("can.obj", "soda.png", "can", "a soda can"),
    "rs_cereal": ("cereal.obj", "cereal.png", "box", "a cereal box"),
    "rs_lemon": ("lemon.obj", "lemon.png", "fruit", "a lemon"),
    "rs_milk": ("milk.obj", "ceramic.png", "box", "a milk carton"),
}


def pybullet_objects() -> list[MeshObject]:
    import pybullet_data

    root = Path(pybullet_data.getDataPath())
    return [
        MeshObject(uid, root / path, name, category, euler)
        for uid, (path, category, name, euler) in PYBULLET_OBJECTS.items()
    ]


def robosuite_assets(source: str | Path | None, cache: Path) -> Path | None:
    """robosuite's ``models/assets`` folder: from ``source`` (a wheel or a folder), else an installed robosuite."""
    if source is None:
        spec = importlib.util.find_spec("robosuite")
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / "models" / "assets"
    source = Path(source)
    if source.is_dir():
        for candidate in (source, source / "models" / "assets", source / "robosuite" / "models" / "assets"):
            if (candidate / "objects").is_dir():
                return candidate
        raise FileNotFoundError(f"{source}: no robosuite models/assets/objects folder inside")
    if not zipfile.is_zipfile(source):
        raise FileNotFoundError(f"{source}: neither a robosuite wheel nor a folder")
    target = cache / "robosuite-assets"
    prefix = "robosuite/models/assets/"
    with zipfile.ZipFile(source) as wheel:
        members = [m for m in wheel.namelist() if m.startswith((prefix + "objects/", prefix + "textures/"))]
        if not members:
            raise FileNotFoundError(f"{source}: the wheel has no {prefix}objects")
        wheel.extractall(target, members)
    return target / prefix


def robosuite_objects(assets: Path) -> list[MeshObject]:
    meshes, textures = assets / "objects" / "meshes", assets / "textures"
    return [
        MeshObject(uid, meshes / mesh, name, category, (0.0, 0.0, 0.0), texture=textures / texture)
        for uid, (mesh, texture, category, name) in ROBOSUITE_OBJECTS.items()
    ]
