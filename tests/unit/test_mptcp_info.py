"""struct mptcp_info decoding, held to the C compiler's layout (ctypes).

ctypes lays a Structure out as the platform's C compiler does (natural
alignment), so the offsets here come from the structure's declaration in
seed 003 and linux/mptcp.h, not from the table under test.
"""

from __future__ import annotations

import ctypes

import pytest

from mptcpd.netlink.mptcp_info import FIELDS, MPTCP_INFO_SIZE, MptcpInfo, decode_mptcp_info

u8, u32, u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint64


class CMptcpInfo(ctypes.Structure):
    _fields_ = [
        ("subflows", u8), ("add_addr_signal", u8), ("add_addr_accepted", u8),
        ("subflows_max", u8), ("add_addr_signal_max", u8), ("add_addr_accepted_max", u8),
        ("flags", u32), ("token", u32), ("write_seq", u64), ("snd_una", u64),
        ("rcv_nxt", u64),
        ("local_addr_used", u8), ("local_addr_max", u8),  # 5.12
        ("csum_enabled", u8),  # 5.14
        ("retransmits", u32), ("bytes_retrans", u64), ("bytes_sent", u64),  # 6.5
        ("bytes_received", u64), ("bytes_acked", u64),
        ("subflows_total", u8),  # 6.8
        ("endp_laminar_max", u8), ("reserved", u8 * 2),  # 6.18 (reserved[3] before)
        ("last_data_sent", u32), ("last_data_recv", u32), ("last_ack_recv", u32),  # 6.10
    ]


NAMES = [name for name, _ in CMptcpInfo._fields_ if name != "reserved"]


def filled() -> tuple[bytes, dict[str, int]]:
    """A structure whose every field holds a distinct value near its maximum."""
    info = CMptcpInfo()
    values = {}
    for i, (name, ctype) in enumerate(CMptcpInfo._fields_):
        if name == "reserved":
            continue
        value = (1 << (8 * ctypes.sizeof(ctype))) - 1 - i
        setattr(info, name, value)
        values[name] = value
    return bytes(info), values


def test_the_table_is_the_c_layout() -> None:
    assert ctypes.sizeof(CMptcpInfo) == MPTCP_INFO_SIZE
    assert [name for name, _, _ in FIELDS] == NAMES
    for name, offset, _fmt in FIELDS:
        assert getattr(CMptcpInfo, name).offset == offset, name


def test_every_field_decodes() -> None:
    data, values = filled()
    assert decode_mptcp_info(data) == values
    # A newer kernel writes more than this module knows: the rest is ignored.
    assert decode_mptcp_info(data + b"\xff" * 40) == values


@pytest.mark.parametrize("length", [0, 1, 6, 12, 16, 39])
def test_a_truncated_buffer_gives_the_fields_that_fit(length: int) -> None:
    data, values = filled()
    expected = {name: value for name, value in values.items()
                if getattr(CMptcpInfo, name).offset + getattr(CMptcpInfo, name).size <= length}
    decoded = decode_mptcp_info(data[:length])
    assert decoded == expected
    info = MptcpInfo.from_bytes(data[:length])
    assert info.reported() == expected
    assert all(getattr(info, name) is None for name in values if name not in expected)


@pytest.mark.parametrize(("length", "last"), [
    (40, "rcv_nxt"), (47, "rcv_nxt"),
    (48, "csum_enabled"),  # 5.12-6.4: 43 bytes of fields, padded to 48
    (79, "csum_enabled"), (80, "bytes_acked"),  # 6.5
    (88, "subflows_total"),  # 6.8, 6.9: 81 bytes, padded to 88
    (95, "subflows_total"), (96, "last_ack_recv"), (200, "last_ack_recv"),
])
def test_the_padding_of_an_older_kernel_is_no_field(length: int, last: str) -> None:
    """Each kernel writes sizeof its struct, tail padding included: the
    padding after csum_enabled (5.14) is where retransmits lies in 6.5, the
    padding after subflows_total (6.8) holds last_data_sent in 6.10."""
    data, values = filled()
    names = list(values)
    expected = {name: values[name] for name in names[:names.index(last) + 1]}
    assert decode_mptcp_info(data[:length]) == expected


class CTcpInfo(ctypes.Structure):
    """struct tcp_info (linux/tcp.h) up to tcpi_segs_in."""

    _fields_ = [
        ("state", u8), ("ca_state", u8), ("retransmits", u8), ("probes", u8),
        ("backoff", u8), ("options", u8), ("wscale", u8), ("flags", u8),
        ("rto", u32), ("ato", u32), ("snd_mss", u32), ("rcv_mss", u32),
        ("unacked", u32), ("sacked", u32), ("lost", u32), ("retrans", u32),
        ("fackets", u32), ("last_data_sent", u32), ("last_ack_sent", u32),
        ("last_data_recv", u32), ("last_ack_recv", u32), ("pmtu", u32),
        ("rcv_ssthresh", u32), ("rtt", u32), ("rttvar", u32), ("snd_ssthresh", u32),
        ("snd_cwnd", u32), ("advmss", u32), ("reordering", u32), ("rcv_rtt", u32),
        ("rcv_space", u32), ("total_retrans", u32), ("pacing_rate", u64),
        ("max_pacing_rate", u64), ("bytes_acked", u64), ("bytes_received", u64),
        ("segs_out", u32), ("segs_in", u32),
    ]


def test_tcp_info_fields_are_the_c_layout() -> None:
    from mptcpd.sockinfo import _TCP_FIELDS, TcpInfo

    raw = CTcpInfo()
    values = {}
    for i, (name, offset, _fmt) in enumerate(_TCP_FIELDS):
        assert getattr(CTcpInfo, name).offset == offset, name
        ctype = dict(CTcpInfo._fields_)[name]
        values[name] = (1 << (8 * ctypes.sizeof(ctype))) - 2 - i
        setattr(raw, name, values[name])
    data = bytes(raw)
    info = TcpInfo.from_bytes(data)
    assert {name: getattr(info, name) for name in values} == values
    short = TcpInfo.from_bytes(data[:72])  # an old kernel: rtt (68) but not rttvar
    assert short.rtt == values["rtt"] and short.rttvar is None


def test_subflow_addresses() -> None:
    import socket
    import struct

    from mptcpd.sockinfo import _sockaddr
    from mptcpd.types import SockAddr

    sin = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 5201) + \
        socket.inet_pton(socket.AF_INET, "192.0.2.1") + bytes(120)
    sin6 = struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 80) + bytes(4) + \
        socket.inet_pton(socket.AF_INET6, "2001:db8::1") + bytes(104)
    assert _sockaddr(sin) == SockAddr("192.0.2.1", 5201)
    assert _sockaddr(sin6) == SockAddr("2001:db8::1", 80)
    assert _sockaddr(bytes(128)) is None
