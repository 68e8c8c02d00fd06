"""Netlink attributes: one walker and one encoder for every strict codec.

An attribute (``struct nlattr``; rtnetlink's ``struct rtattr`` is the same)
is a u16 length that counts the 4-byte header, a u16 type whose two top
bits are flags (``NLA_F_NESTED``, ``NLA_F_NET_BYTEORDER``), the payload,
then padding to a multiple of 4 bytes.  Pure functions over bytes-like
objects, no I/O.

The ``mptcp_pm`` event decoder (:mod:`mptcpd.netlink.event_codec`) walks
attributes its own way: it follows the kernel's lenient rules (a length
below 4 counts as 4, one running past the message is cut at its end) and
learns the layout of each kind of event, a measured hot path.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

__all__ = ["HEADER", "TYPE_MASK", "MalformedAttribute", "encode", "walk"]

#: The attribute header: length, type.
HEADER = struct.Struct("=HH")
#: An attribute's type without ``NLA_F_NESTED`` and ``NLA_F_NET_BYTEORDER``.
TYPE_MASK = 0x3FFF

_header = HEADER.unpack_from


class MalformedAttribute(ValueError):
    """Attributes that cannot be framed.

    Either the header at ``offset`` declares a ``length`` below 4 or
    running past the end (``type`` is its type without flags), or, for an
    exact walk, ``length`` bytes (1 to 3) follow the last attribute
    (``type`` is None).
    """

    def __init__(self, type: int | None, length: int, offset: int) -> None:
        if type is None:
            text = f"{length} stray bytes after the attributes"
        else:
            text = f"attribute of type {type} with length {length} at offset {offset}"
        super().__init__(text)
        self.type = type
        self.length = length
        self.offset = offset


def walk(data: Any, offset: int, end: int, *,
         exact: bool = False) -> Iterator[tuple[int, int, int]]:
    """``(type, start, stop)`` of each attribute in ``data[offset:end]``, in
    order: its type without flags and where its payload starts and stops.

    Lazy: the attributes before a malformed one are yielded, then
    :class:`MalformedAttribute` is raised.  Fewer than 4 bytes left after
    the last attribute end the walk; with ``exact`` they are malformed too.
    """
    while offset + 4 <= end:
        length, type = _header(data, offset)
        if length < 4 or offset + length > end:
            raise MalformedAttribute(type & TYPE_MASK, length, offset)
        yield type & TYPE_MASK, offset + 4, offset + length
        offset += (length + 3) & ~3
    if exact and offset < end:
        raise MalformedAttribute(None, end - offset, offset)


def encode(type: int, payload: bytes) -> bytes:
    """One attribute of ``type`` (flags included) holding ``payload``,
    padded to 4 bytes."""
    length = 4 + len(payload)
    return HEADER.pack(length, type) + payload + b"\0" * (-length % 4)
