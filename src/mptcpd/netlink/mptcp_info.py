"""``struct mptcp_info``: every counter the running kernel reports.

The kernel fills ``struct mptcp_info`` (``linux/mptcp.h``) for
``getsockopt(SOL_MPTCP, MPTCP_INFO)`` and for sock_diag's
``INET_DIAG_INFO`` (what ``ss -Mi`` prints).  The structure grows with the
kernel, in waves; the kernel writes at most what it knows and says how many
bytes it wrote (``optlen``, or the attribute's length).  So a field is
reported only when it lies wholly within the bytes written: a newer field
that an older kernel did not write is absent, never a zero.

The fields, with natural alignment (the kernel's layout on every
architecture Linux supports for MPTCP)::

    v5.9   0 u8 subflows, add_addr_signal, add_addr_accepted, subflows_max,
             add_addr_signal_max, add_addr_accepted_max; 2 pad bytes
           8 u32 flags; 12 u32 token; 16 u64 write_seq; 24 u64 snd_una;
          32 u64 rcv_nxt
    v5.12 40 u8 local_addr_used; 41 u8 local_addr_max
    v5.14 42 u8 csum_enabled
    v6.5  44 u32 retransmits; 48 u64 bytes_retrans; 56 u64 bytes_sent;
          64 u64 bytes_received; 72 u64 bytes_acked
    v6.8  80 u8 subflows_total
    v6.18 81 u8 endp_laminar_max (a reserved byte before: 0 there)
    v6.10 84 u32 last_data_sent; 88 u32 last_data_recv; 92 u32 last_ack_recv

The kernel copies ``sizeof`` its structure, tail padding included: 5.12 to
6.4 write 48 bytes (43 of fields), 6.8 and 6.9 write 88 (81 of fields).
So the fields reported are those of the largest of these sizes that the
length reaches (:data:`WAVES`): the padding of an older kernel is never
read as a newer field.  A length shorter than the first wave (a truncated
buffer) reports the fields that fit wholly.

Names are the kernel's without the ``mptcpi_`` prefix.  ``subflows`` counts
the subflows added to the initial one; ``subflows_total`` (6.8 on) counts
them all, the initial one included while it is attached.

:func:`mptcp_info` and :func:`mptcp_full_info` read the counters of a
socket of one's own, for applications.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping

__all__ = [
    "FIELDS",
    "MPTCP_INFO_SIZE",
    "WAVES",
    "MptcpInfo",
    "decode_mptcp_info",
]

#: ``(name, offset, struct format)`` of every field, in structure order.
FIELDS: tuple[tuple[str, int, str], ...] = (
    ("subflows", 0, "B"),
    ("add_addr_signal", 1, "B"),
    ("add_addr_accepted", 2, "B"),
    ("subflows_max", 3, "B"),
    ("add_addr_signal_max", 4, "B"),
    ("add_addr_accepted_max", 5, "B"),
    ("flags", 8, "I"),
    ("token", 12, "I"),
    ("write_seq", 16, "Q"),
    ("snd_una", 24, "Q"),
    ("rcv_nxt", 32, "Q"),
    ("local_addr_used", 40, "B"),
    ("local_addr_max", 41, "B"),
    ("csum_enabled", 42, "B"),
    ("retransmits", 44, "I"),
    ("bytes_retrans", 48, "Q"),
    ("bytes_sent", 56, "Q"),
    ("bytes_received", 64, "Q"),
    ("bytes_acked", 72, "Q"),
    ("subflows_total", 80, "B"),
    ("endp_laminar_max", 81, "B"),
    ("last_data_sent", 84, "I"),
    ("last_data_recv", 88, "I"),
    ("last_ack_recv", 92, "I"),
)
#: ``sizeof(struct mptcp_info)`` as this module knows it.
MPTCP_INFO_SIZE = 96
#: ``(sizeof, the last field)`` of each kernel's structure, by size.
WAVES: tuple[tuple[int, str], ...] = (
    (40, "rcv_nxt"),  # 5.9
    (48, "csum_enabled"),  # 5.12, 5.14 (43 bytes, padded)
    (80, "bytes_acked"),  # 6.5
    (88, "subflows_total"),  # 6.8 (81 bytes, padded)
    (96, "last_ack_recv"),  # 6.10
)

#: Decoders for each length the kernel may have written: one precompiled
#: struct of the fields that fit, and their names (filled lazily).
_BY_LENGTH: dict[int, tuple[struct.Struct, tuple[str, ...]]] = {}


def _decoder(length: int) -> tuple[struct.Struct, tuple[str, ...]]:
    fitting = [(name, offset, fmt) for name, offset, fmt in FIELDS
               if offset + struct.calcsize(fmt) <= length]
    wave = [last for size, last in WAVES if size <= length]
    if wave:
        names = [name for name, _, _ in FIELDS]
        fitting = fitting[:names.index(wave[-1]) + 1]
    layout, end = "=", 0
    for _name, offset, fmt in fitting:
        if offset > end:
            layout += f"{offset - end}x"
        layout += fmt
        end = offset + struct.calcsize(fmt)
    decoder = (struct.Struct(layout), tuple(name for name, _, _ in fitting))
    _BY_LENGTH[length] = decoder
    return decoder


def decode_mptcp_info(data: bytes) -> dict[str, int]:
    """The fields of ``struct mptcp_info`` that lie wholly within ``data``
    (the bytes the kernel wrote), by name; bytes past the fields this
    module knows are ignored."""
    length = min(len(data), MPTCP_INFO_SIZE)
    decoder = _BY_LENGTH.get(length) or _decoder(length)
    layout, names = decoder
    return dict(zip(names, layout.unpack_from(data)))


@dataclasses.dataclass(frozen=True)
class MptcpInfo:
    """``struct mptcp_info`` as the kernel reported it: a field the kernel
    did not write is None."""

    subflows: int | None = None
    add_addr_signal: int | None = None
    add_addr_accepted: int | None = None
    subflows_max: int | None = None
    add_addr_signal_max: int | None = None
    add_addr_accepted_max: int | None = None
    flags: int | None = None
    token: int | None = None
    write_seq: int | None = None
    snd_una: int | None = None
    rcv_nxt: int | None = None
    local_addr_used: int | None = None
    local_addr_max: int | None = None
    csum_enabled: int | None = None
    retransmits: int | None = None
    bytes_retrans: int | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    bytes_acked: int | None = None
    subflows_total: int | None = None
    endp_laminar_max: int | None = None
    last_data_sent: int | None = None
    last_data_recv: int | None = None
    last_ack_recv: int | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> MptcpInfo:
        return cls(**decode_mptcp_info(data))

    def reported(self) -> Mapping[str, int]:
        """The fields the kernel reported, by name."""
        return {name: value for name, value in dataclasses.asdict(self).items()
                if value is not None}
