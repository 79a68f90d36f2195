"""ddclip: Duoduo CLIP multi-view shape embeddings for ROS 2 robots.

The Python distribution is named ``ddclip-py``; its import packages are ``ddclip_core``
(model, no ROS) and, as they land, ``ddclip_ros`` (ROS 2 layer) and ``training``. The ROS package
(package.xml) is named ``ddclip``, which no source folder uses, so its generated interfaces are
never shadowed; and the distribution is not named ``ddclip`` either, because the interfaces install
an egg-info of that name, which pip would take for this distribution and uninstall on upgrade.
"""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="ddclip-py",
    version="0.1.0",
    description="Duoduo CLIP: multi-view shape embeddings in CLIP space, with a ROS 2 perception node",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["ddclip_core*", "ddclip_ros*", "training*", "ddclip_cli*"]),
    package_data={"ddclip_core": ["assets/*"], "ddclip_ros": ["*.xml"]},
    install_requires=[
        "numpy>=1.24",
        "pillow>=9",
        "torch>=2.2",
        "torchvision",
        "open_clip_torch>=2.24",
        "safetensors>=0.4",
        "tqdm",
        "faiss-cpu>=1.8",
        "h5py>=3.8",
        "pyarrow>=14",
        "rosbags>=0.11",
    ],
    extras_require={
        "download": ["huggingface_hub>=0.20"],
        "test": ["pytest>=7", "ruff"],
        # training/: data preparation (a real renderer, mesh conversion), Lightning training, plots
        "train": ["pytorch-lightning>=2.1", "pybullet>=3.2", "trimesh>=4", "matplotlib>=3.7", "pyyaml>=6"],
        "tensorboard": ["tensorboard>=2.12"],
        # --ray: data preparation and bank building on a Ray cluster (tasks + Ray Data batch inference)
        # <2.64: bounded actor restarts (map_batches's max_restarts) pass through ray_remote_args, which
        # Ray 2.64 removes with no named replacement yet; without them a poison shard retries forever
        "cluster": ["ray[data]>=2.40,<2.64"],
        # GS-CLIP refinement: gsplat's reference projection (CPU) and its CUDA kernels (GPU, JIT-compiled)
        "gaussians": ["gsplat>=1.4,<1.6"],
        # ddclip_core/onnx: ONNX export (torch's exporter needs onnxscript) and the ONNX Runtime backend (CPU;
        # GPU execution providers come with onnxruntime-gpu instead)
        "onnx": ["onnx>=1.17", "onnxscript>=0.2", "onnx-ir>=0.1", "onnxruntime>=1.22"],
    },
    entry_points={
        "console_scripts": [
            "ddclip = ddclip_cli:main",
            "ddclip-node = ddclip_ros.node:main",
            "ddclip-demo = ddclip_ros.demo:main",
            "ddclip-query = ddclip_ros.query_client:main",
            "ddclip-replay = ddclip_ros.replay:main",
        ],
    },
)
