"""Helpers shared by the event decoder tests: fixtures captured from the
kernel and messages built with our own pyroute2 class."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from tests.unit.event_oracle import mptcp_event_msg

DATA = Path(__file__).resolve().parent / "data"
#: The family id the kernel gave ``mptcp_pm`` when the fixtures were taken.
FAMILY_ID = 0x1C


def captures() -> list[tuple[str, dict[str, str]]]:
    """Every captured datagram: (event name, record with ns/what/hex)."""
    out = []
    for path in sorted(DATA.glob("events_*.json")):
        doc = json.loads(path.read_text())
        for rec in doc["captures"]:
            out.append((doc["event"], rec))
    return out


def capture_bytes() -> list[bytes]:
    return [bytes.fromhex(rec["hex"]) for _, rec in captures()]


def build(cmd: int, attrs: list[tuple[str, Any]], version: int = 1) -> bytes:
    """Encode an event message with :class:`mptcp_event_msg`."""
    msg = mptcp_event_msg()
    msg["cmd"] = cmd
    msg["version"] = version
    msg["attrs"] = list(attrs)
    msg["header"]["type"] = FAMILY_ID
    msg.encode()
    return bytes(msg.data)


def raw_message(cmd: int, nlas: list[tuple[int, bytes]], length: int | None = None) -> bytes:
    """A message with arbitrary attribute TLVs (for malformed cases only)."""
    body = b""
    for nla_type, payload in nlas:
        nla = struct.pack("=HH", 4 + len(payload), nla_type) + payload
        body += nla + b"\0" * (-len(nla) % 4)
    genl = struct.pack("=BBH", cmd, 1, 0)
    total = 16 + 4 + len(body)
    hdr = struct.pack("=IHHII", total if length is None else length, FAMILY_ID, 0, 0, 0)
    return hdr + genl + body


def pyroute2_parse(data: bytes) -> Any:
    """Parse ``data`` the way the pyroute2 socket does for one message."""
    msg = mptcp_event_msg(data)
    msg.decode()
    return msg
