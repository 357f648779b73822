"""What is known about Jetson modules, SoCs and JetPack releases, as lookup tables.

Sources: NVIDIA's Jetson module data sheets and the device-tree part numbers, otherwise third-party tables such
as jetson-stats'. The JetPack and TensorRT version facts are in agent/device/versions.py. These tables are hints: a value read from the device (a package
version, TensorRT's own DLA count) always wins over a value looked up here.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

# Part number (module, not carrier board) -> module name. Facts 6.2, plus jetson-stats' table for the rest.
MODULES: Dict[str, str] = {
    "p3767-0000": "Jetson Orin NX 16GB",
    "p3767-0001": "Jetson Orin NX 8GB",
    "p3767-0003": "Jetson Orin Nano 8GB",
    "p3767-0004": "Jetson Orin Nano 4GB",
    "p3767-0005": "Jetson Orin Nano 8GB (developer kit module)",
    "p3701-0000": "Jetson AGX Orin",
    "p3701-0004": "Jetson AGX Orin 32GB",
    "p3701-0005": "Jetson AGX Orin 64GB",
    "p3701-0008": "Jetson AGX Orin Industrial",
    "p3668-0000": "Jetson Xavier NX (developer kit module)",
    "p3668-0001": "Jetson Xavier NX",
    "p3668-0003": "Jetson Xavier NX 16GB",
    "p2888-0001": "Jetson AGX Xavier 16GB",
    "p2888-0004": "Jetson AGX Xavier 32GB",
    "p2888-0005": "Jetson AGX Xavier 64GB",
    "p2888-0006": "Jetson AGX Xavier 8GB",
    "p2888-0008": "Jetson AGX Xavier Industrial",
    "p3448-0000": "Jetson Nano (developer kit module)",
    "p3448-0002": "Jetson Nano",
    "p3448-0003": "Jetson Nano 2GB",
    "p3310-1000": "Jetson TX2",
    "p3489-0000": "Jetson TX2i",
    "p3489-0888": "Jetson TX2 4GB",
    "p3636-0001": "Jetson TX2 NX",
    "p2180-1000": "Jetson TX1",
    "p3834-0008": "Jetson AGX Thor (developer kit)",
}

# Part-number prefix -> module family, for part numbers not in MODULES. p3767 is Orin NX *or* Orin Nano,
# so it is not here: the model string decides.
MODULE_FAMILIES: Dict[str, str] = {
    "p3701": "Jetson AGX Orin",
    "p3668": "Jetson Xavier NX",
    "p2888": "Jetson AGX Xavier",
    "p3448": "Jetson Nano",
    "p3310": "Jetson TX2",
    "p3489": "Jetson TX2i",
    "p3636": "Jetson TX2 NX",
    "p2180": "Jetson TX1",
    "p3834": "Jetson AGX Thor",
}

# Carrier boards seen in compatible strings ("nvidia,p3768-0000+p3767-0000": carrier + module); never a module.
CARRIER_BOARDS = ("p3768", "p3737", "p3509", "p3449", "p2771", "p2822", "p2597", "p3740", "p3971")

# Module family (substring of the module name, most specific first) -> SoC, and DLA cores as a hint.
# DLA counts: NVIDIA says "up to 2 per SoC"; Orin NX 8GB = 1 and Xavier NX = 2 are not verified on a device.
FAMILIES: Tuple[Tuple[str, str, Optional[int]], ...] = (
    ("agx orin", "tegra234", 2),
    ("orin nx 16gb", "tegra234", 2),
    ("orin nx 8gb", "tegra234", 1),
    ("orin nx", "tegra234", None),
    ("orin nano", "tegra234", 0),
    ("agx xavier", "tegra194", 2),
    ("xavier nx", "tegra194", 2),
    ("tx2", "tegra186", 0),
    ("tx1", "tegra210", 0),
    ("nano", "tegra210", 0),
    ("thor", "tegra264", 0),
)

# SoC -> GPU compute capability (NVIDIA's CUDA GPU list). tegra264 (Thor) depends on the CUDA major version.
SOC_COMPUTE: Dict[str, str] = {
    "tegra234": "8.7",
    "tegra194": "7.2",
    "tegra186": "6.2",
    "tegra210": "5.3",
}

# SoCs without DLA whatever the module.
SOC_WITHOUT_DLA = ("tegra210", "tegra186", "tegra264")

def module_for_part(part: str) -> Optional[str]:
    part = part.lower()
    if part in MODULES:
        return MODULES[part]
    return MODULE_FAMILIES.get(part[:5])


def family_of(module: Optional[str]) -> Optional[Tuple[str, Optional[int]]]:
    """(SoC, DLA cores hint) for a module name, or None when the family is not known."""
    if not module:
        return None
    lowered = module.lower()
    for needle, soc, dla in FAMILIES:
        if needle in lowered:
            return soc, dla
    return None


def compute_capability_for_soc(soc: Optional[str], cuda: Optional[str], l4t: Optional[str]) -> Optional[str]:
    """Thor (tegra264) reports SM 11.0 from CUDA 13 on and SM 10.1 with CUDA 12.x."""
    if not soc:
        return None
    if soc == "tegra264":
        cuda_major = _major(cuda)
        if cuda_major is None and _major(l4t) is not None:
            cuda_major = 13 if (_major(l4t) or 0) >= 38 else None  # JetPack 7 (L4T 38+) ships CUDA 13
        if cuda_major is None:
            return None
        return "11.0" if cuda_major >= 13 else "10.1"
    return SOC_COMPUTE.get(soc)


def normalise_soc(text: str) -> Optional[str]:
    """'tegra23x' (jetson-stats) -> 'tegra234'; 'tegra194' stays; anything else -> None."""
    match = re.search(r"tegra(\d\d)(\d|x)", text.lower())
    if not match:
        return None
    digit = match.group(2)
    if digit == "x":
        digit = {"23": "4", "19": "4", "18": "6", "21": "0", "26": "4"}.get(match.group(1), "")
        if not digit:
            return None
    return f"tegra{match.group(1)}{digit}"


def _major(version: Optional[str]) -> Optional[int]:
    if not version:
        return None
    match = re.match(r"\s*(\d+)", version)
    return int(match.group(1)) if match else None
