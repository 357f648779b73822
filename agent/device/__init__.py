"""The device fingerprint: module, SoC, L4T, JetPack, TensorRT, CUDA, compute capability, DLA cores."""

from __future__ import annotations

from agent.device.fingerprint import DeviceFingerprint, fingerprint

__all__ = ["DeviceFingerprint", "fingerprint"]
