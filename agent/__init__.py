"""edge-agent: deployment agent for NVIDIA Jetson (and DLA) fleets."""

__version__ = "0.1.0"
