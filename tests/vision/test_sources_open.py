"""Opening real sources: a video file, a folder of stills, and sources that never open."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.vision.sources import SourceError, SourceOptions, open_source, probe_source
from deploy.demo.material import OBJECTS_VIDEO
from tests.helpers import testdata as data_file


def test_a_file_opens_with_its_size_and_rate(short_video: Path) -> None:
    reader = open_source(f"file://{short_video}", SourceOptions(loop=False))
    try:
        assert (reader.info.width, reader.info.height) == (64, 48)
        assert reader.info.fps == pytest.approx(25.0)
        frames = 0
        while reader.read() is not None:
            frames += 1
        assert frames == 24 and reader.ended
    finally:
        reader.close()


def test_a_looping_file_starts_again(short_video: Path) -> None:
    reader = open_source(f"file://{short_video}", SourceOptions(loop=True))
    try:
        assert all(reader.read() is not None for _ in range(60))
        assert not reader.ended
    finally:
        reader.close()


def test_a_folder_of_stills_in_name_order(stills: Path) -> None:
    reader = open_source(f"images://{stills}", SourceOptions(loop=False))
    try:
        images = []
        while True:
            image = reader.read()
            if image is None:
                break
            images.append(image)
        assert len(images) == 5 and reader.ended
        assert images[0].shape == (48, 64, 3)
    finally:
        reader.close()


def test_a_camera_that_is_not_there_lists_what_was_tried() -> None:
    with pytest.raises(SourceError) as caught:
        open_source("v4l2:///dev/video97")
    text = str(caught.value)
    assert "[1] v4l2 /dev/video97" in text and "[2] any 97" in text
    assert "does not exist" in text


def test_an_rtsp_server_that_refuses_lists_the_ffmpeg_attempt() -> None:
    from agent.fleet.local_broker import free_port

    with pytest.raises(SourceError, match=r"tried \[1\] ffmpeg rtsp://127\.0\.0\.1"):
        open_source(f"rtsp://127.0.0.1:{free_port()}/none", SourceOptions(open_timeout_s=2))


def test_a_missing_file_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_source(f"file://{tmp_path}/absent.mp4")
    with pytest.raises(SourceError, match="holds no images"):
        open_source(f"images://{tmp_path}")


def test_probe_reports_size_rate_and_decode_time() -> None:
    video = data_file("video", OBJECTS_VIDEO.name)
    report = probe_source(f"file://{video}", frames=10)
    assert (report.width, report.height, report.frames) == (*OBJECTS_VIDEO.size, 10)
    assert report.declared_fps == pytest.approx(OBJECTS_VIDEO.fps)
    assert report.measured_fps > 0 and report.decode_ms_p50 > 0 and not report.ended_early
