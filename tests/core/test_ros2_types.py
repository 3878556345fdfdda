"""ROS 2 topics that mcap-ros2-support alone lost or decoded slowly, on real rosbag2 files (issue 10, 5 and 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from mcap.reader import make_reader
from mcap.writer import Writer

from ad_core.decode import decode_file, read_frame
from ad_core.decode import mcap_reader as mcap_reader_module

pytestmark = pytest.mark.realdata
RERUN = "mcap/rerun__crates_store_re_data_loader_tests_assets_rosbag2_2025_09_10-13_03_56_0.mcap"
ROSBAGS_RS = "mcap/rosbags-rs__tests_test_bags_test_bag_mcap_test_bag_mcap.mcap"


def _without_schema_texts(source: Path, target: Path) -> None:
    """The same recording with every ros2msg schema text emptied (writers that rely on standard types)."""
    with open(source, "rb") as fh, open(target, "wb") as out:
        writer = Writer(out)
        writer.start(profile="ros2", library="test")
        schemas: dict[int, int] = {}
        channels: dict[int, int] = {}
        for schema, channel, message in make_reader(fh).iter_messages(log_time_order=False):
            if schema.id not in schemas:
                schemas[schema.id] = writer.register_schema(schema.name, schema.encoding, b"")
            if channel.id not in channels:
                channels[channel.id] = writer.register_channel(channel.topic, "cdr", schemas[schema.id])
            writer.add_message(channels[channel.id], message.log_time, message.data, message.publish_time)
        writer.finish()


def test_an_image_topic_with_an_empty_schema_text_keeps_its_pixels(shared_data: Path, tmp_path: Path) -> None:
    """Was: the table held timestamps only, read_frame raised KeyError 'data', status ok."""
    stripped = tmp_path / "no_schema_text.mcap"
    _without_schema_texts(shared_data / RERUN, stripped)
    rep = decode_file(stripped, tmp_path / "out")
    image = rep.stream("mcap__image")
    assert (image.kind, image.status, image.rows) == ("image", "ok", 1)
    assert {"data", "width", "height", "encoding", "header.frame_id"} <= set(image.columns)
    pixels = read_frame(image.parquet, 0)
    assert len(pixels) == 921_600  # 640 x 480 rgb8
    reference = decode_file(shared_data / RERUN, tmp_path / "ref")  # the same file with its schema texts
    assert pixels == read_frame(reference.stream("mcap__image").parquet, 0)
    for name in ("mcap__imu", "mcap__nav_sat_fix_gps", "mcap__point_cloud2"):
        got = pq.read_table(rep.stream(name).parquet).drop_columns(["publish_time_ns"])
        assert got.to_pylist() == pq.read_table(reference.stream(name).parquet).select(got.column_names).to_pylist()


def test_service_event_topics_decode_instead_of_being_skipped(shared_data: Path, tmp_path: Path) -> None:
    """Was: skipped with InvalidFieldDefinition: --- (the schema is the raw .srv text)."""
    rep = decode_file(shared_data / "mcap/rosbag2__rosbag2_cpp_test_rosbag2_cpp_bags_only_services.mcap", tmp_path)
    (events,) = rep.streams
    assert (events.name, events.status, events.rows) == ("mcap__add_two_ints_service_event", "ok", 12)
    table = pq.read_table(events.parquet).to_pylist()
    assert {row["info.event_type"] for row in table} == {1, 2}  # recorded at the server: request in, response out
    requests = [json.loads(r["request"]) for r in table]
    responses = [json.loads(r["response"]) for r in table]
    assert requests[0] == [{"a": 1, "b": 3}] and responses[0] == []  # the request event carries no response
    assert [r[0]["sum"] for r in responses if r] == [4, 5, 6, 7, 8, 9]  # a + b of each request


def test_computed_layouts_give_the_generic_decoders_tables(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """94 standard types (odometry, tf, poses, arrays...): the column-wise path equals message-by-message decoding."""
    fast = decode_file(shared_data / ROSBAGS_RS, tmp_path / "fast")
    monkeypatch.setattr(mcap_reader_module, "computed_layout", lambda *a: None)
    slow = decode_file(shared_data / ROSBAGS_RS, tmp_path / "slow")
    assert [s.name for s in fast.streams] == [s.name for s in slow.streams] and len(fast.streams) >= 90
    for a, b in zip(fast.streams, slow.streams, strict=True):
        assert a.status == b.status == "ok", (a.name, a.error)
        ta, tb = pq.read_table(a.parquet), pq.read_table(b.parquet)
        assert ta.column_names == tb.column_names, a.name
        assert ta.to_pylist() == tb.to_pylist(), a.name
    tf = pq.read_table(fast.stream("mcap__test_tf2_msgs_tf_message").parquet).to_pylist()
    assert json.loads(tf[0]["transforms"])[0]["transform"]["rotation"]["w"] == pytest.approx(1.0)


def test_nested_messages_are_laid_out_column_wise(shared_data: Path, tmp_path: Path) -> None:
    """Odometry, tf and pose topics take the computed-layout path (no per-message decoding)."""
    from ad_core.decode.ros2_types import computed_layout

    with open(shared_data / ROSBAGS_RS, "rb") as fh:
        messages = {c.topic: (s, m) for s, c, m in make_reader(fh).iter_messages()}
    for topic in ("/test/nav_msgs/odometry", "/test/tf2_msgs/tf_message", "/test/geometry_msgs/pose_stamped"):
        schema, message = messages[topic]
        layout = computed_layout(schema.name, schema.data.decode(), message.data)
        assert layout is not None, topic
        assert np.isin(np.arange(4), layout.structural).all()  # the CDR header is structural
