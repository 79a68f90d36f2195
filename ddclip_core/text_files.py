"""Reading the text files users hand in (labels, templates, uid maps, captions, tables) so that a file
that is not UTF-8, not JSON or a damaged .gz is refused with an error naming it, not a bare codec, parser
or zlib message. A byte-order mark (Excel's "CSV UTF-8") is read as the start of the file, not of its
first column's name."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def naming_file(path: str | os.PathLike) -> Iterator[None]:
    """Errors of decoding ``path`` inside the block become ValueErrors that start with its name."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except (EOFError, zlib.error) as exc:  # a truncated or damaged .gz
        raise ValueError(f"{path}: not a complete gzip file ({exc})") from None


def read_text(path: str | os.PathLike) -> str:
    with naming_file(path):
        return Path(path).read_text(encoding="utf-8-sig")


def read_json(path: str | os.PathLike) -> Any:
    with naming_file(path):
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
