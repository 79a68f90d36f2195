"""ddclip's Fast DDS profile for images (``fastdds_images.xml``), used unless the user configures Fast DDS.

Between processes on one machine Fast DDS hands samples over in the publisher's shared-memory segment,
512 KiB by default. A burst of views (six 224 x 224 crops are 900 KB) or one large frame does not fit:
under best effort the samples that find it full are lost, under reliable they are repaired 10-15 ms later,
after the reader's and the writer's response delays. Measured on loopback (2 cores): best effort kept 10
of 30 2-megapixel frames and 162 of 180 crops sent six at a time; reliable delivered about half of such
bursts 12 ms late. With an 8 MiB segment: every sample, none late.

The segment that matters is the PUBLISHER's: the node and ddclip's tools use the profile unless Fast DDS
is configured already, and the camera driver's and the tracker's processes need it as much. Fast DDS 3
(Kilted) reads ``FASTDDS_DEFAULT_PROFILES_FILE``, Fast DDS 2 (Humble to Jazzy, by ``ROS_DISTRO``)
``FASTRTPS_DEFAULT_PROFILES_FILE``: the one of the distribution is set (with both set, Kilted's rmw read
the deprecated one and lost the first frame of a stream). With ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``
rmw_fastrtps adds its own shared-memory and UDP transports after the profile's; the profile's segment,
listed first, carries the data. Other RMW implementations ignore the variables.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

PROFILE = Path(__file__).with_name("fastdds_images.xml")
VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")  # Fast DDS 3, Fast DDS 2
WORKING_FOLDER_PROFILES = ("DEFAULT_FASTDDS_PROFILES.xml", "DEFAULT_FASTRTPS_PROFILES.xml")  # read by themselves
TRANSPORTS_VARIABLE = "FASTDDS_BUILTIN_TRANSPORTS"  # the profile's own transports would override it
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")


def user_configuration(environ: MutableMapping[str, str]) -> str | None:
    """How the user configures Fast DDS's transports already, if they do: a profile file or the
    built-in transports variable (e.g. UDPv4 between containers without a shared /dev/shm)."""
    for variable in VARIABLES:
        if environ.get(variable):
            return environ[variable]
    for name in WORKING_FOLDER_PROFILES:
        if Path(name).is_file():
            return str(Path(name).resolve())
    if environ.get(TRANSPORTS_VARIABLE):
        return f"{TRANSPORTS_VARIABLE}={environ[TRANSPORTS_VARIABLE]}"
    return None


def use_image_profile(environ: MutableMapping[str, str] | None = None) -> str:
    """Point Fast DDS at ``PROFILE`` in ``environ`` (default: this process's, before ``rclpy.init``) unless
    the user configures Fast DDS already; returns what Fast DDS will use (the ready line prints it)."""
    environ = os.environ if environ is None else environ
    own = user_configuration(environ)
    if own is not None:
        return own
    fast_dds_2 = environ.get("ROS_DISTRO", "").lower() in FAST_DDS_2_DISTROS
    environ[VARIABLES[1] if fast_dds_2 else VARIABLES[0]] = str(PROFILE)
    return str(PROFILE)
