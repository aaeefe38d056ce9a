"""tcpdump on the lab's WAN bridge port of gw-a, and the tshark options that decrypt
ESP with the save_keys tables (tests/netns/test_savekeys_netns.py,
tests/netns/test_tso_netns.py)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.helpers.lab_sites import Sites

# What a user types, too (docs/operations.md, "Decrypting a capture").
TSHARK_PREFS = (
    "-o", "esp.enable_encryption_decode:TRUE",
    "-o", "esp.enable_authentication_check:TRUE",
)  # fmt: skip


class Capture:
    """tcpdump on gw-a's WAN bridge port: every IKE and ESP datagram, whole."""

    def __init__(self, sites: Sites, path: Path) -> None:
        self.sites, self.path = sites, path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Path:
        lab = self.sites.lab
        self.proc = lab.popen(
            "wan", "tcpdump", "-i", f"{lab.prefix}-wa", "-nn", "-U", "--immediate-mode",
            "-w", str(self.path), "udp port 500 or udp port 4500",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on ...": the capture runs
        assert b"listening on" in line, line
        return self.path

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        time.sleep(0.2)  # the last echo reply is on the wire
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
