"""Drop the duplicate shared libraries that wheels carry in place of symbolic links, to fit a device call.

A wheel cannot hold symbolic links, so ``libfastdds.so``, ``libfastdds.so.3.2`` and ``libfastdds.so.3.2.2``
travel as three copies of one 19 MB file (11 MB of the 46 MB the ROS 2 wheels take compressed). This
repacks each wheel in a folder with one copy (the fullest version name) and writes ``links.txt`` beside
them: one ``LINK TARGET`` line per dropped copy, LINK relative to the environment's prefix, for
``scripts/gpu_check.sh`` to recreate after installing. Only files installed under the prefix
(``*.data/data/``) are dropped; wheels without such copies are left as they are.

    python scripts/slim_wheels.py .gpu/ros
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

LIBRARY = re.compile(r"(?P<folder>.+\.data/data/(?:.*/)?)(?P<stem>lib[^/]+?\.so)(?P<version>(?:\.\d+)*)$")


def duplicate_copies(wheel: Path) -> dict[str, str]:
    """Entries of ``wheel`` that repeat another entry of the same library: {dropped entry: kept entry}."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            match = LIBRARY.match(name)
            if match:
                groups[(match["folder"], match["stem"])].append(name)
        dropped = {}
        for names in groups.values():
            names.sort(key=len)
            kept = names[-1]  # libX.so.3.2.2: the file the shorter names link to
            digest = hashlib.sha256(archive.read(kept)).digest()
            for name in names[:-1]:
                if hashlib.sha256(archive.read(name)).digest() == digest:
                    dropped[name] = kept
    return dropped


def slim(wheel: Path) -> list[tuple[str, str]]:
    """Repack ``wheel`` in place without its duplicate copies; return (link, target) pairs to recreate."""
    dropped = duplicate_copies(wheel)
    if not dropped:
        return []
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", scratch, str(wheel)], check=True)
        (unpacked,) = Path(scratch).iterdir()
        for name in dropped:
            (unpacked / name).unlink()
        wheel.unlink()
        subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(wheel.parent), str(unpacked)], check=True)
    links = []
    for name, kept in sorted(dropped.items()):
        relative = name.split(".data/data/", 1)[1]
        links.append((relative, kept.rsplit("/", 1)[1]))
    return links


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(argv[0])
    links = [link for wheel in sorted(folder.glob("*.whl")) for link in slim(wheel)]
    (folder / "links.txt").write_text("".join(f"{link} {target}\n" for link, target in links))
    print(f"[slim-wheels] {len(links)} duplicate libraries dropped; links to recreate in {folder / 'links.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
