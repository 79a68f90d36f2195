"""scripts/slim_wheels.py, which makes the ROS 2 wheels fit a GPU machine's call: a wheel's duplicate shared
libraries are dropped, and installing it and recreating links.txt's links gives back every name, as
scripts/gpu_check.sh does on the GPU machine."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = b"\x7fELF pretend library" * 1000
OTHER = b"\x7fELF another library" * 1000


def _wheel(folder: Path, files: dict[str, bytes]) -> Path:
    """A wheel of package ``demo_libs`` 1.0 holding ``files``, packed by the wheel tool itself."""
    tree = folder / "tree" / "demo_libs-1.0"
    info = tree / "demo_libs-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo_libs\nVersion: 1.0\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-any\n")
    for name, content in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(content)
    wheels = folder / "wheels"
    wheels.mkdir()
    subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(wheels), str(tree)], check=True)
    return next(wheels.glob("*.whl"))


def test_duplicates_are_dropped_and_come_back_as_links_after_install(tmp_path: Path) -> None:
    data = "demo_libs-1.0.data/data/lib/"
    wheel = _wheel(
        tmp_path,
        {
            "demo_libs/__init__.py": b"",
            data + "libdemo.so": LIBRARY,
            data + "libdemo.so.3": LIBRARY,
            data + "libdemo.so.3.2.1": LIBRARY,
            data + "libother.so": OTHER,  # one name only: kept
            data + "libsame.so": OTHER,
            data + "libsame.so.1": LIBRARY,  # same stem, other content: not a duplicate
        },
    )
    subprocess.run([sys.executable, str(ROOT / "scripts" / "slim_wheels.py"), str(wheel.parent)], check=True)

    with zipfile.ZipFile(wheel) as archive:
        libraries = sorted(name.rsplit("/", 1)[1] for name in archive.namelist() if "/lib/" in name)
        assert libraries == ["libdemo.so.3.2.1", "libother.so", "libsame.so", "libsame.so.1"]
        assert archive.testzip() is None
    links = (wheel.parent / "links.txt").read_text().splitlines()
    assert links == ["lib/libdemo.so libdemo.so.3.2.1", "lib/libdemo.so.3 libdemo.so.3.2.1"]

    prefix = tmp_path / "prefix"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--prefix", str(prefix), str(wheel)],
        check=True,
    )
    for line in links:  # what gpu_check.sh does: ln -sfn TARGET PREFIX/LINK
        link, target = line.split()
        (prefix / link).symlink_to(target)
    lib = prefix / "lib"
    for name in ("libdemo.so", "libdemo.so.3", "libdemo.so.3.2.1", "libsame.so.1"):
        assert (lib / name).read_bytes() == LIBRARY
    assert (lib / "libother.so").read_bytes() == (lib / "libsame.so").read_bytes() == OTHER


def test_a_wheel_without_duplicates_is_left_as_it_is(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, {"demo_libs/__init__.py": b"", "demo_libs-1.0.data/data/lib/libone.so.1": LIBRARY})
    before = wheel.read_bytes()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "slim_wheels.py"), str(wheel.parent)], check=True)
    assert wheel.read_bytes() == before
    assert (wheel.parent / "links.txt").read_text() == ""


def test_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "slim_wheels.py"), str(tmp_path / "absent")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "slim_wheels.py" in result.stderr
