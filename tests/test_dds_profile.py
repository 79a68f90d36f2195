"""Which Fast DDS profile ddclip's processes use: theirs when given, else ddclip's image profile."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from ddclip_ros.dds_profile import (
    PROFILE,
    TRANSPORTS_VARIABLE,
    VARIABLES,
    WORKING_FOLDER_PROFILES,
    use_image_profile,
)


def test_the_image_profile_is_used_unless_fast_dds_is_configured_already(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    environ: dict[str, str] = {}
    assert use_image_profile(environ) == str(PROFILE)
    assert environ == {VARIABLES[0]: str(PROFILE)}  # Fast DDS 3 (Kilted, and these wheels)
    jazzy = {"ROS_DISTRO": "jazzy"}  # Fast DDS 2 reads the older name
    assert use_image_profile(jazzy) == str(PROFILE) and jazzy[VARIABLES[1]] == str(PROFILE)
    for variable in VARIABLES:
        own = {variable: "/robot/fastdds.xml"}
        assert use_image_profile(own) == "/robot/fastdds.xml" and own == {variable: "/robot/fastdds.xml"}
    empty = dict.fromkeys(VARIABLES, "")  # set but empty: as if unset
    assert use_image_profile(empty) == str(PROFILE)
    udp_only = {TRANSPORTS_VARIABLE: "UDPv4"}  # e.g. containers without a shared /dev/shm: left alone
    assert use_image_profile(udp_only) == "FASTDDS_BUILTIN_TRANSPORTS=UDPv4" and udp_only == {
        TRANSPORTS_VARIABLE: "UDPv4"
    }
    for name in WORKING_FOLDER_PROFILES:  # Fast DDS reads these by itself
        (tmp_path / name).write_text("<dds/>")
        untouched: dict[str, str] = {}
        assert use_image_profile(untouched) == str(tmp_path / name) and untouched == {}
        (tmp_path / name).unlink()


def test_the_image_profile_keeps_both_default_transports_with_a_larger_segment():
    namespace = {"dds": "http://www.eprosima.com"}
    root = ElementTree.parse(PROFILE).getroot()
    transports = {
        t.findtext("dds:transport_id", namespaces=namespace): t
        for t in root.iterfind(".//dds:transport_descriptor", namespace)
    }
    kinds = sorted(t.findtext("dds:type", namespaces=namespace) for t in transports.values())
    assert kinds == ["SHM", "UDPv4"]  # UDP too: without it nodes on other machines would not be reached
    shm = next(t for t in transports.values() if t.findtext("dds:type", namespaces=namespace) == "SHM")
    assert int(shm.findtext("dds:segment_size", namespaces=namespace)) >= 8 * 2**20
    participant = root.find(".//dds:participant", namespace)
    assert participant.get("is_default_profile") == "true"
    used = [e.text for e in participant.iterfind(".//dds:userTransports/dds:transport_id", namespace)]
    assert sorted(used) == sorted(transports)
