"""Topic names: `<prefix>/<device-id>/<channel>` and `<prefix>/group/<name>/<channel>`.

Per-device topics let broker ACLs confine a device to its own subtree (see deploy/mosquitto/).
Artifacts live under `<prefix>/artifacts/<sha256>/...`; a device requests blocks on its own
`<prefix>/<device>/artifact-req` and receives them on `<prefix>/<device>/artifact-data`.
"""

from __future__ import annotations

from dataclasses import dataclass

CHANNELS = ("status", "cmd", "reply", "events", "telemetry", "results", "desired", "snapshot")
GROUP_LEVEL = "group"
ARTIFACTS_LEVEL = "artifacts"
RESERVED_IDS = (GROUP_LEVEL, ARTIFACTS_LEVEL, "fleet")


@dataclass(frozen=True)
class Topics:
    """All topic names one device uses."""

    prefix: str
    device_id: str

    def device(self, channel: str) -> str:
        return f"{self.prefix}/{self.device_id}/{channel}"

    def group(self, group: str, channel: str) -> str:
        return f"{self.prefix}/{GROUP_LEVEL}/{group}/{channel}"

    def artifact_manifest(self, artifact_id: str) -> str:
        return f"{self.prefix}/{ARTIFACTS_LEVEL}/{artifact_id}/manifest"

    @property
    def artifact_request(self) -> str:
        return self.device("artifact-req")

    @property
    def artifact_data(self) -> str:
        return self.device("artifact-data")

    # the channels, named
    @property
    def status(self) -> str:
        return self.device("status")

    @property
    def cmd(self) -> str:
        return self.device("cmd")

    @property
    def reply(self) -> str:
        return self.device("reply")

    @property
    def events(self) -> str:
        return self.device("events")

    @property
    def telemetry(self) -> str:
        return self.device("telemetry")

    @property
    def results(self) -> str:
        return self.device("results")

    @property
    def desired(self) -> str:
        return self.device("desired")

    @property
    def snapshot(self) -> str:
        return self.device("snapshot")


def all_devices(prefix: str, channel: str) -> str:
    """Subscription filter for one channel of every device (the operator's view)."""
    return f"{prefix}/+/{channel}"


def device_of(topic: str, prefix: str) -> str:
    """The device id in `<prefix>/<device>/<channel>`, or '' if the topic is not a device topic."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != prefix or parts[1] in RESERVED_IDS:
        return ""
    return parts[1]
