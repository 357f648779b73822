"""A real mosquitto on a free loopback port, for the demo, the tests and the benchmarks.

Not a mock: it runs the Debian `mosquitto` binary with a generated configuration (plain TCP, or TLS with the
given certificates, optional password file and ACL file) and stops it on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from agent.errors import AgentError


def find_mosquitto() -> Optional[str]:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalBroker:
    """`with LocalBroker() as broker: broker.port` - a mosquitto that lives as long as the block."""

    def __init__(
        self,
        port: int = 0,
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        tls_ca: Optional[str] = None,
        require_client_cert: bool = False,
        password_file: Optional[str] = None,
        acl_file: Optional[str] = None,
        extra_config: str = "",
        persistence_dir: Optional[str] = None,
    ) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._tls = (tls_cert, tls_key, tls_ca)
        self._require_client_cert = require_client_cert
        self._password_file = password_file
        self._acl_file = acl_file
        self._extra = extra_config
        self._persistence_dir = persistence_dir
        self._workdir = tempfile.mkdtemp(prefix="edge-agent-broker-")
        self.log_path = Path(self._workdir) / "mosquitto.log"
        self._proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    def config_text(self) -> str:
        lines: List[str] = [f"listener {self.port} 127.0.0.1"]
        cert, key, ca = self._tls
        if cert and key:
            lines += [f"certfile {cert}", f"keyfile {key}"]
            if ca:
                lines.append(f"cafile {ca}")
            if self._require_client_cert:
                lines += ["require_certificate true", "use_identity_as_username true"]
        if self._password_file:
            lines += ["allow_anonymous false", f"password_file {self._password_file}"]
        elif not self._require_client_cert:
            lines.append("allow_anonymous true")
        if self._acl_file:
            lines.append(f"acl_file {self._acl_file}")
        if self._persistence_dir:
            lines += ["persistence true", f"persistence_location {self._persistence_dir.rstrip('/')}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto' and cannot read a test's private files
        lines += ["set_tcp_nodelay true", "log_dest stdout", "log_type error", "log_type warning", "log_type notice",
                  "max_queued_messages 100000"]
        if self._extra:
            lines.append(self._extra)
        return "\n".join(lines) + "\n"

    def start(self) -> LocalBroker:
        if self.running:  # already started (e.g. started by hand, then used in a with-block)
            return self
        binary = find_mosquitto()
        if binary is None:
            raise AgentError("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")
        conf = Path(self._workdir) / "mosquitto.conf"
        conf.write_text(self.config_text())
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AgentError(f"mosquitto exited at start: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AgentError(f"mosquitto did not listen on port {self.port} within 10 s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash or power loss would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
