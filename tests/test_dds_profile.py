"""Which Fast DDS profile ddclip's processes use: theirs when given, else ddclip's image profile."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from ddclip_ros.dds_profile import PROFILE, VARIABLE, WORKING_FOLDER_PROFILE, use_image_profile


def test_the_image_profile_is_used_unless_one_is_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    environ: dict[str, str] = {}
    assert use_image_profile(environ) == str(PROFILE) and environ[VARIABLE] == str(PROFILE)
    own = {VARIABLE: "/robot/fastdds.xml"}
    assert use_image_profile(own) == "/robot/fastdds.xml" and own == {VARIABLE: "/robot/fastdds.xml"}
    empty = {VARIABLE: ""}  # set but empty: as if unset
    assert use_image_profile(empty) == str(PROFILE)
    (tmp_path / WORKING_FOLDER_PROFILE).write_text("<dds/>")  # Fast DDS reads this one by itself
    untouched: dict[str, str] = {}
    assert use_image_profile(untouched) == str(tmp_path / WORKING_FOLDER_PROFILE) and untouched == {}


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
