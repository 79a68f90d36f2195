"""Frames with their tracked boxes drawn on, for the optional ``ddclip/annotated`` topic. No ROS in here."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ddclip_core.perception.frames import Box

# Distinct, saturated colours; a track keeps its colour across frames and processes (crc32, not hash()).
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def track_colour(track_id: str) -> tuple[int, int, int]:
    return PALETTE[zlib.crc32(track_id.encode()) % len(PALETTE)]


def best_match(matches: Any) -> tuple[str, float] | None:
    """The best-scoring (name, score) of an ObjectMatches' first bank and first label match, if any."""
    # float32, as subscribers of the matches read the score, so a caption here matches one made from them
    firsts = (*matches.bank_matches[:1], *matches.label_matches[:1])
    candidates = [(m.name or m.id, float(np.float32(m.score))) for m in firsts]
    return max(candidates, key=lambda c: c[1]) if candidates else None


def draw_detections(rgb: np.ndarray, boxes: list[Box], labels: dict[str, tuple[str, float]]) -> np.ndarray:
    """A copy of ``rgb`` with each box outlined and captioned "track: name score" (name once it is known)."""
    image = Image.fromarray(rgb).convert("RGB")  # a copy: the frame may be read-only message memory
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    width = max(1, round(max(image.size) / 320))  # lines stay visible on large frames
    for box in boxes:
        colour = track_colour(box.track_id)
        draw.rectangle((box.x_min, box.y_min, box.x_max, box.y_max), outline=colour, width=width)
        known = labels.get(box.track_id)
        caption = box.track_id if known is None else f"{box.track_id}: {known[0]} {known[1]:.2f}"
        left, top, right, bottom = draw.textbbox((box.x_min, box.y_min), caption, font=font)
        # Above the box where there is room, else inside its top edge.
        lift = bottom - top + 2 if box.y_min - (bottom - top + 2) >= 0 else 0
        draw.rectangle((left, top - lift, right + 2, bottom - lift + 2), fill=colour)
        draw.text((box.x_min + 1, box.y_min - lift + 1), caption, fill=(0, 0, 0), font=font)
    return np.asarray(image)
