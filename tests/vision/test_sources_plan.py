"""URI + options -> what gets opened, as a plain function: no camera needed."""

from __future__ import annotations

import pytest

from agent.models import parse
from agent.vision.sources import (
    OpenPlan,
    SourceError,
    SourceOptions,
    csi_pipeline,
    fourcc_code,
    fps_fraction,
    opencv_has_gstreamer,
    plan_source,
    split_uri,
)


def test_v4l2_device_path_then_index_with_properties_in_driver_order() -> None:
    plans = plan_source("v4l2:///dev/video2", SourceOptions(width=1280, height=720, fps=30, format="MJPG"), have_gstreamer=False)
    assert [(p.backend, p.target) for p in plans] == [("v4l2", "/dev/video2"), ("any", 2)]
    names = [name for name, _ in plans[0].properties]
    assert names == ["FOURCC", "FRAME_WIDTH", "FRAME_HEIGHT", "FPS", "BUFFERSIZE"]  # pixel format before size
    assert dict(plans[0].properties)["FRAME_WIDTH"] == 1280.0
    assert all(p.live for p in plans)


def test_v4l2_index_and_bare_forms() -> None:
    assert plan_source("v4l2://0", have_gstreamer=False)[0].target == 0
    assert plan_source("1", have_gstreamer=False)[0].target == 1
    assert plan_source("/dev/video3", have_gstreamer=False)[0].target == "/dev/video3"


def test_csi_is_a_nvargus_pipeline_into_a_one_buffer_appsink() -> None:
    (plan,) = plan_source("csi://1", SourceOptions(width=1920, height=1080, fps=29.97, flip=2), have_gstreamer=True)
    assert plan.backend == "gstreamer"
    text = str(plan.target)
    assert text.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=(int)1920, height=(int)1080")
    assert "framerate=(fraction)30000/1001" in text
    assert "nvvidconv flip-method=2" in text
    assert text.endswith("appsink drop=true max-buffers=1 sync=false")


def test_csi_without_gstreamer_says_why() -> None:
    with pytest.raises(SourceError, match="GStreamer"):
        plan_source("csi://0", have_gstreamer=False)


def test_rtsp_prefers_gstreamer_latency_zero_then_ffmpeg_with_timeouts() -> None:
    url = "rtsp://user:pw@10.0.0.5:554/stream1?channel=1"
    plans = plan_source(url, SourceOptions(read_timeout_s=2), have_gstreamer=True)
    assert [p.backend for p in plans] == ["gstreamer", "ffmpeg"]
    assert f'rtspsrc location="{url}" latency=0 protocols=tcp' in str(plans[0].target)
    assert "decodebin" in str(plans[0].target)
    ffmpeg = plans[1]
    assert ffmpeg.target == url  # the query string belongs to the camera, passed untouched
    assert dict(ffmpeg.open_params) == {"OPEN_TIMEOUT_MSEC": 10000, "READ_TIMEOUT_MSEC": 2000}
    assert dict(ffmpeg.env) == {"OPENCV_FFMPEG_CAPTURE_OPTIONS": "rtsp_transport;tcp", "OPENCV_FFMPEG_IS_THREAD_SAFE": "1"}


def test_rtsp_without_gstreamer_is_ffmpeg_only() -> None:
    plans = plan_source("rtsp://cam/live", SourceOptions(transport="udp"), have_gstreamer=False)
    assert [p.backend for p in plans] == ["ffmpeg"]
    assert dict(plans[0].env)["OPENCV_FFMPEG_CAPTURE_OPTIONS"] == "rtsp_transport;udp"


def test_rtsp_with_a_codec_and_hardware_decode() -> None:
    plans = plan_source("rtsp://cam/live", SourceOptions(codec="h265", hw_decode=True, backend="gstreamer"), have_gstreamer=True)
    assert len(plans) == 1
    assert "rtph265depay ! h265parse ! nvv4l2decoder ! nvvidconv" in str(plans[0].target)


def test_file_loops_and_is_lossless_unless_realtime(tmp_path: object) -> None:
    plans = plan_source("file:///data/clip.mp4", have_gstreamer=False)
    assert [(p.backend, p.target) for p in plans] == [("ffmpeg", "/data/clip.mp4"), ("any", "/data/clip.mp4")]
    assert plans[0].loop and not plans[0].live and plans[0].pace_fps == 0.0
    paced = plan_source("file:///data/clip.mp4", SourceOptions(realtime=True, loop=False), have_gstreamer=False)[0]
    assert paced.live and not paced.loop and paced.pace_fps == -1.0  # at the file's own rate
    assert plan_source("file://relative/clip.mp4", have_gstreamer=False)[0].target == "relative/clip.mp4"


def test_images_folder() -> None:
    (plan,) = plan_source("images:///data/stills", SourceOptions(realtime=True, fps=2), have_gstreamer=False)
    assert plan == OpenPlan("images", "images", "/data/stills", loop=True, pace_fps=2.0, live=True)


@pytest.mark.parametrize("uri", ["", "gopher://x", "file://", "v4l2://cam"])
def test_bad_uris_are_clear_errors(uri: str) -> None:
    with pytest.raises(SourceError):
        plan_source(uri, have_gstreamer=True)


def test_split_uri_guesses_bare_forms(tmp_path: object) -> None:
    assert split_uri("clip.mp4") == ("file", "clip.mp4")
    assert split_uri("rtsps://cam/x") == ("rtsp", "rtsps://cam/x")
    assert split_uri("http://cam/mjpg") == ("http", "http://cam/mjpg")


def test_options_from_a_deployment_dict() -> None:
    options = parse(SourceOptions, {"width": 640, "realtime": True, "fps": 15}, error=SourceError)
    assert (options.width, options.realtime, options.fps) == (640, True, 15.0)
    strings = parse(SourceOptions, {"width": "640", "realtime": "true", "fps": "15"}, error=SourceError, strict=False)
    assert strings == options
    with pytest.raises(SourceError, match="resolution: unknown key"):
        parse(SourceOptions, {"resolution": "640x480"}, error=SourceError)
    with pytest.raises(SourceError, match="transport: one of tcp, udp"):
        parse(SourceOptions, {"transport": "sctp"}, error=SourceError)
    with pytest.raises(SourceError, match="width: expected int"):
        parse(SourceOptions, {"width": "wide"}, error=SourceError, strict=False)


def test_gstreamer_support_read_from_build_information() -> None:
    assert opencv_has_gstreamer("Video I/O:\n    GStreamer:                   YES (1.20.3)\n") is True
    assert opencv_has_gstreamer("Video I/O:\n    GStreamer:                   NO\n") is False
    assert opencv_has_gstreamer("nothing about it") is False


def test_fourcc_and_fps_helpers() -> None:
    import cv2

    assert fourcc_code("MJPG") == cv2.VideoWriter_fourcc(*"MJPG")
    assert fourcc_code("avc1") == cv2.VideoWriter_fourcc(*"avc1")
    assert fps_fraction(30) == "30/1"
    assert fps_fraction(29.97) == "30000/1001"
    assert "sensor-mode=3" in csi_pipeline(0, SourceOptions(sensor_mode=3))
