"""ddclip's Fast DDS profile for images (``fastdds_images.xml``), used unless the user has one of their own.

Between processes on one machine Fast DDS hands samples over in the publisher's shared-memory segment,
512 KiB by default. A burst of views (six 224 x 224 crops are 900 KB) or one large frame does not fit:
under best effort the samples that find it full are lost, under reliable they are repaired 10-15 ms later,
after the reader's and the writer's response delays. Measured on loopback (2 cores): best effort kept 10
of 30 2-megapixel frames and 162 of 180 crops sent six at a time; reliable delivered 40-50 % of such
bursts 12 ms late. With an 8 MiB segment: every sample, none late.

The segment that matters is the PUBLISHER's: the node and ddclip's tools use the profile unless one is
given, and the camera driver's and the tracker's processes need it as much (``export
FASTDDS_DEFAULT_PROFILES_FILE=...``). Other RMW implementations ignore the variable.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

PROFILE = Path(__file__).with_name("fastdds_images.xml")
VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
WORKING_FOLDER_PROFILE = "DEFAULT_FASTDDS_PROFILES.xml"  # Fast DDS reads this one too


def use_image_profile(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Point Fast DDS at ``PROFILE`` in ``environ`` (default: this process's, before ``rclpy.init``) unless a
    profile is already given there or in the working folder; returns the profile Fast DDS will read."""
    environ = os.environ if environ is None else environ
    if environ.get(VARIABLE):
        return environ[VARIABLE]
    if Path(WORKING_FOLDER_PROFILE).is_file():
        return str(Path(WORKING_FOLDER_PROFILE).resolve())
    environ[VARIABLE] = str(PROFILE)
    return str(PROFILE)
