"""Capture threads: newest-frame semantics with counted drops, lossless files, reopening what ends or dies."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from agent.vision.capture import Capture, ReconnectPolicy
from agent.vision.sources import SourceError, SourceOptions
from tests.helpers import wait_until

FAST_RETRY = ReconnectPolicy(initial_s=0.05, max_s=0.2)


def test_backoff_grows_and_caps() -> None:
    policy = ReconnectPolicy(initial_s=0.5, max_s=4.0, factor=2.0)
    assert [policy.delay(n) for n in range(0, 6)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]


def test_a_lossless_file_delivers_every_frame_in_order(short_video: Path) -> None:
    capture = Capture(f"file://{short_video}", SourceOptions(loop=False), stop_at_end=True, depth=2).start()
    ids = []
    try:
        while not capture.finished:
            ids += [f.frame_id for f in capture.take(4, timeout=0.5)]
    finally:
        capture.stop()
    assert ids == list(range(24))
    stats = capture.stats()
    assert stats.drops == 0 and stats.state == "ended" and stats.reconnects == 0


def test_a_live_source_keeps_the_newest_frame_and_counts_drops(short_video: Path) -> None:
    capture = Capture(f"file://{short_video}", SourceOptions(loop=True, realtime=True, fps=200), depth=1).start()
    try:
        capture.wait_open(5)
        time.sleep(0.3)  # a consumer much slower than the source
        first = capture.take(1, timeout=1)
        time.sleep(0.2)
        second = capture.take(1, timeout=1)
    finally:
        capture.stop()
    assert first and second and second[0].frame_id > first[0].frame_id + 10
    assert capture.stats().drops >= 20
    assert capture.lossless is False


def test_a_file_that_ends_is_reopened_and_counted(short_video: Path) -> None:
    capture = Capture(f"file://{short_video}", SourceOptions(loop=False), policy=FAST_RETRY, depth=4).start()
    try:
        assert wait_until(lambda: (capture.take(4, timeout=0.1) is not None) and capture.stats().reconnects >= 2)
    finally:
        capture.stop()
    stats = capture.stats()
    assert stats.disconnects >= 2 and stats.frames >= 48
    assert "end of the file" in stats.last_error


def test_a_source_that_dies_is_retried_with_backoff_then_reopened(stills: Path, tmp_path: Path) -> None:
    capture = Capture(f"images://{stills}", SourceOptions(loop=True, realtime=True, fps=100), policy=FAST_RETRY).start()
    hidden = tmp_path / "hidden"
    try:
        capture.wait_open(5)
        shutil.move(str(stills), str(hidden))  # the camera goes away mid-stream
        assert wait_until(lambda: capture.stats().open_failures >= 2)
        assert capture.stats().state in ("waiting", "opening")
        assert "does not exist" in capture.stats().last_error
        shutil.move(str(hidden), str(stills))  # and comes back
        assert wait_until(lambda: capture.stats().reconnects >= 1 and capture.stats().state == "streaming")
        assert capture.take(1, timeout=2)
    finally:
        capture.stop()


def test_a_source_that_never_opens_keeps_retrying_and_says_why() -> None:
    capture = Capture("v4l2:///dev/video96", policy=FAST_RETRY).start()
    try:
        with pytest.raises(SourceError, match=r"did not open.*tried \[1\] v4l2 /dev/video96"):
            capture.wait_open(0.5)
        assert capture.stats().open_failures >= 2
        assert capture.take(1, timeout=0.05) == []
    finally:
        capture.stop(timeout=2)
    assert capture.stats().state == "stopped"
