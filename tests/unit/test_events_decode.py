"""Decoding kernel events: bytes captured from Linux 6.18, messages built with
our own pyroute2 class, and the lean decoder against the pyroute2 one."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import socket
import struct
from typing import Any, cast

import pytest

from mptcpd import events as ev
from mptcpd.netlink import constants as C
from mptcpd.netlink.event_codec import OVERRUN, decode_datagram, decode_message
from mptcpd.netlink.genl_events import EventReader
from tests.unit.event_oracle import decode
from mptcpd.types import AddressId, SockAddr, Token
from tests.unit.events_support import (
    FAMILY_ID,
    build,
    captures,
    pyroute2_parse,
    raw_message,
)

LOGGER = "mptcpd.netlink.event_codec"
CLASS_OF = {
    "CREATED": ev.ConnectionCreated,
    "ESTABLISHED": ev.ConnectionEstablished,
    "CLOSED": ev.ConnectionClosed,
    "ANNOUNCED": ev.AddressAnnounced,
    "REMOVED": ev.AddressRemoved,
    "SUB_ESTABLISHED": ev.SubflowEstablished,
    "SUB_CLOSED": ev.SubflowClosed,
    "SUB_PRIORITY": ev.SubflowPriority,
    "LISTENER_CREATED": ev.ListenerCreated,
    "LISTENER_CLOSED": ev.ListenerClosed,
}
HOOKS = {
    ev.ConnectionCreated: "new_connection",
    ev.ConnectionEstablished: "connection_established",
    ev.ConnectionClosed: "connection_closed",
    ev.AddressAnnounced: "new_address",
    ev.AddressRemoved: "address_removed",
    ev.SubflowEstablished: "new_subflow",
    ev.SubflowClosed: "subflow_closed",
    ev.SubflowPriority: "subflow_priority",
    ev.ListenerCreated: "listener_created",
    ev.ListenerClosed: "listener_closed",
}
CAPTURES = captures()


def both(data: bytes) -> tuple[ev.Event | None, ev.Event | None]:
    """pyroute2's event and the decoder's, which must read the message the
    same way twice: the second time (or both times, when an earlier test
    decoded a message of this layout) through the layout it learnt."""
    lean = decode_message(data)
    assert decode_message(data) == lean
    return decode(pyroute2_parse(data)), lean


def sa(ip: str, port: int) -> SockAddr:
    return SockAddr(ipaddress.ip_address(ip), port)


def by_what(event: str, fragment: str) -> bytes:
    for name, rec in CAPTURES:
        if name == event and fragment in rec["what"]:
            return bytes.fromhex(rec["hex"])
    raise LookupError(f"no {event} capture with {fragment!r}")


# -- the event classes ----------------------------------------------------------


@pytest.mark.parametrize("cls", list(HOOKS))
def test_event_classes_are_frozen_slotted_and_name_their_hook(cls: type[Any]) -> None:
    assert cls.HOOK == HOOKS[cls]
    assert dataclasses.is_dataclass(cls)
    assert "__slots__" in cls.__dict__
    assert dataclasses.fields(cls)
    doc = cls.__doc__ or ""
    for field in dataclasses.fields(cls):
        assert f":ivar {field.name}:" in doc, f"{cls.__name__}.{field.name} undocumented"


def test_events_are_immutable() -> None:
    event = ev.ConnectionClosed(token=Token(1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, "token", 2)  # noqa: B010 - the frozen check is the point


# -- captured from the kernel ------------------------------------------------------


def test_every_event_type_has_a_kernel_capture() -> None:
    assert {name for name, _ in CAPTURES} == set(CLASS_OF)


@pytest.mark.parametrize(("name", "rec"), CAPTURES,
                         ids=[f"{n}-{r['ns']}-{i}" for i, (n, r) in enumerate(CAPTURES)])
def test_captures_decode_alike_with_both_decoders(name: str, rec: dict[str, str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    data = bytes.fromhex(rec["hex"])
    caplog.set_level(logging.DEBUG, LOGGER)
    ref, lean = both(data)
    assert caplog.records == [], "a real kernel message must decode silently"
    assert ref is not None
    assert type(ref) is CLASS_OF[name]
    assert lean == ref
    # The datagram path gives the same, with the family id checked.
    assert decode_datagram(data, family_id=FAMILY_ID) == [ref]
    assert decode_datagram(data, family_id=FAMILY_ID + 1) == []
    # Every value pyroute2's own attribute dump shows is in the event.
    fields = dict(p.split("=", 1) for p in rec["what"].split(", ") if "=" in p)
    if "token" in fields:
        assert getattr(ref, "token") == int(fields["token"])  # noqa: B009
    if "rem_id" in fields and hasattr(ref, "rem_id"):
        assert ref.rem_id == int(fields["rem_id"])
    if "sport" in fields and hasattr(ref, "laddr"):
        saddr = fields.get("saddr4", fields.get("saddr6"))
        assert saddr is not None
        assert ref.laddr.port == int(fields["sport"])
        assert ref.laddr.ip == ipaddress.ip_address(saddr)
    if "dport" in fields and hasattr(ref, "raddr"):
        daddr = fields.get("daddr4", fields.get("daddr6"))
        assert daddr is not None
        assert ref.raddr.port == int(fields["dport"])
        assert ref.raddr.ip == ipaddress.ip_address(daddr)
    if "backup" in fields:
        assert getattr(ref, "backup") is (fields["backup"] == "1")  # noqa: B009


def test_client_connection_created_v4() -> None:
    event = decode_message(by_what("CREATED", "token=1998741224"))
    assert event == ev.ConnectionCreated(
        token=Token(1998741224), laddr=sa("192.0.2.1", 19140), raddr=sa("192.0.2.2", 5201),
        server_side=False, deny_join_id0=False, loc_id=AddressId(0), rem_id=AddressId(0),
        family=socket.AF_INET, flags=0,
    )


def test_client_connection_established_v6() -> None:
    event = decode_message(by_what("ESTABLISHED", "saddr6=2001:db8:1::1"))
    assert isinstance(event, ev.ConnectionEstablished)
    assert event.token == 1095024504
    assert event.laddr == sa("2001:db8:1::1", 11822)
    assert event.raddr == sa("2001:db8:1::2", 5201)
    assert event.family == socket.AF_INET6
    assert not event.server_side


def test_server_side_from_flags_and_deprecated_attribute() -> None:
    event = decode_message(by_what("CREATED", "server_side=1"))
    assert isinstance(event, ev.ConnectionCreated)
    assert event.server_side and not event.deny_join_id0
    assert event.flags == C.MPTCP_PM_EV_FLAG_SERVER_SIDE
    # A dual-stack listener reports v4-mapped addresses.
    assert event.laddr == sa("::ffff:192.0.2.2", 5201)


def test_deny_join_id0_from_flags() -> None:
    for name in ("CREATED", "ESTABLISHED"):
        event = decode_message(by_what(name, "flags=1,"))
        assert isinstance(event, (ev.ConnectionCreated, ev.ConnectionEstablished))
        assert event.deny_join_id0 and not event.server_side


def test_announced_carries_addr_id_and_port() -> None:
    event = decode_message(by_what("ANNOUNCED", "daddr4=198.51.100.2"))
    assert event == ev.AddressAnnounced(
        token=Token(1998741224), addr_id=AddressId(5), addr=sa("198.51.100.2", 5201))


def test_removed() -> None:
    assert decode_message(by_what("REMOVED", "token=1998741224")) == ev.AddressRemoved(
        token=Token(1998741224), addr_id=AddressId(5))


def test_subflow_backup_is_the_real_value() -> None:
    """C mptcpd passes backup=True for every subflow event; we pass the value."""
    established = decode_message(by_what("SUB_ESTABLISHED", "daddr4=198.51.100.2"))
    priority = decode_message(by_what("SUB_PRIORITY", "daddr4=198.51.100.2"))
    assert isinstance(established, ev.SubflowEstablished)
    assert isinstance(priority, ev.SubflowPriority)
    assert established.backup is False
    assert priority.backup is True
    assert established.laddr == priority.laddr == sa("198.51.100.1", 10187)
    assert (established.loc_id, established.rem_id) == (1, 5)


def test_subflow_closed_with_error_and_interface() -> None:
    event = decode_message(by_what("SUB_CLOSED", "error=104"))
    assert isinstance(event, ev.SubflowClosed)
    assert event.error == errno.ECONNRESET
    assert event.if_idx == 3
    assert event.raddr == sa("192.0.2.2", 0)
    assert event.loc_id == 7


def test_listeners_wildcards() -> None:
    created = decode_message(by_what("LISTENER_CREATED", "saddr6=::"))
    closed = decode_message(by_what("LISTENER_CLOSED", "saddr4=0.0.0.0"))
    assert created == ev.ListenerCreated(sa("::", 6000), family=socket.AF_INET6)
    assert closed == ev.ListenerClosed(sa("0.0.0.0", 6000), family=socket.AF_INET)


# -- built with our message class -------------------------------------------------

FULL_V4 = [
    ("MPTCP_ATTR_TOKEN", 0xDEADBEEF), ("MPTCP_ATTR_FAMILY", 2),
    ("MPTCP_ATTR_LOC_ID", 3), ("MPTCP_ATTR_REM_ID", 4),
    ("MPTCP_ATTR_SADDR4", "203.0.113.1"), ("MPTCP_ATTR_DADDR4", "203.0.113.2"),
    ("MPTCP_ATTR_SPORT", 40000), ("MPTCP_ATTR_DPORT", 443),
]
EXTRAS = [
    ("MPTCP_ATTR_BACKUP", 1), ("MPTCP_ATTR_ERROR", 110), ("MPTCP_ATTR_IF_IDX", 42),
    ("MPTCP_ATTR_RESET_REASON", 4), ("MPTCP_ATTR_RESET_FLAGS", 1),
    ("MPTCP_ATTR_TIMEOUT", 120), ("MPTCP_ATTR_FLAGS", 3),
]


@pytest.mark.parametrize("cmd", [C.MPTCP_EVENT_SUB_ESTABLISHED, C.MPTCP_EVENT_SUB_CLOSED,
                                 C.MPTCP_EVENT_SUB_PRIORITY])
def test_built_subflow_event_with_every_attribute(cmd: int) -> None:
    ref, lean = both(build(cmd, FULL_V4 + EXTRAS))
    assert lean == ref
    assert isinstance(ref, ev.SubflowClosed | ev.SubflowEstablished | ev.SubflowPriority)
    assert ref.token == 0xDEADBEEF
    assert ref.laddr == sa("203.0.113.1", 40000)
    assert ref.raddr == sa("203.0.113.2", 443)
    assert (ref.loc_id, ref.rem_id, ref.family) == (3, 4, 2)
    assert (ref.backup, ref.error, ref.if_idx) == (True, 110, 42)
    assert (ref.reset_reason, ref.reset_flags, ref.timeout) == (4, 1, 120)
    assert ref.flags == 3 and ref.server_side and ref.deny_join_id0


def test_built_created_with_only_the_deprecated_server_side_attribute() -> None:
    ref, lean = both(build(C.MPTCP_EVENT_CREATED,
                           FULL_V4 + [("MPTCP_ATTR_SERVER_SIDE", 1)]))
    assert lean == ref
    assert isinstance(ref, ev.ConnectionCreated)
    assert ref.server_side and not ref.deny_join_id0 and ref.flags == 0


def test_server_side_attribute_zero_means_client() -> None:
    ref, lean = both(build(C.MPTCP_EVENT_ESTABLISHED,
                           FULL_V4 + [("MPTCP_ATTR_SERVER_SIDE", 0)]))
    assert lean == ref
    assert isinstance(ref, ev.ConnectionEstablished) and not ref.server_side


def test_v4_wins_over_v6() -> None:
    attrs = FULL_V4 + [("MPTCP_ATTR_SADDR6", "2001:db8::1"),
                       ("MPTCP_ATTR_DADDR6", "2001:db8::2")]
    ref, lean = both(build(C.MPTCP_EVENT_CREATED, attrs))
    assert lean == ref
    assert isinstance(ref, ev.ConnectionCreated)
    assert ref.laddr.ip.version == 4 and ref.raddr.ip.version == 4


def test_announced_without_port_gets_port_zero() -> None:
    ref, lean = both(build(C.MPTCP_EVENT_ANNOUNCED, [
        ("MPTCP_ATTR_TOKEN", 9), ("MPTCP_ATTR_REM_ID", 2),
        ("MPTCP_ATTR_DADDR6", "2001:db8:3::2")]))
    assert lean == ref == ev.AddressAnnounced(Token(9), AddressId(2), sa("2001:db8:3::2", 0))


# -- log lines and dropped events ---------------------------------

MISSING = {
    C.MPTCP_EVENT_CREATED: "Required MPTCP_EVENT_CREATED message attributes are missing.",
    C.MPTCP_EVENT_ESTABLISHED:
        "Required MPTCP_EVENT_ESTABLISHED message attributes are missing.",
    C.MPTCP_EVENT_CLOSED: "Required MPTCP_EVENT_CLOSED message attributes are missing.",
    C.MPTCP_EVENT_ANNOUNCED: "Required MPTCP_EVENT_ANNOUNCED message attributes are missing.",
    C.MPTCP_EVENT_REMOVED: "Required MPTCP_EVENT_REMOVED message attributes are missing.",
    C.MPTCP_EVENT_SUB_ESTABLISHED: "Required MPTCP_EVENT_SUB_* message attributes are missing.",
    C.MPTCP_EVENT_SUB_CLOSED: "Required MPTCP_EVENT_SUB_* message attributes are missing.",
    C.MPTCP_EVENT_SUB_PRIORITY: "Required MPTCP_EVENT_SUB_* message attributes are missing.",
    C.MPTCP_EVENT_LISTENER_CREATED:
        "Required MPTCP_EVENT_LISTENER_*message attributes are missing.",
    C.MPTCP_EVENT_LISTENER_CLOSED:
        "Required MPTCP_EVENT_LISTENER_*message attributes are missing.",
}


def logs_of(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def check_both(data: bytes, caplog: pytest.LogCaptureFixture) -> tuple[
        ev.Event | None, list[tuple[int, str]]]:
    """Decode with both decoders; assert same result and same log lines."""
    caplog.set_level(logging.DEBUG, LOGGER)
    caplog.clear()
    ref = decode(pyroute2_parse(data))
    ref_logs = logs_of(caplog)
    caplog.clear()
    lean = decode_message(data)
    assert lean == ref
    assert logs_of(caplog) == ref_logs
    return ref, ref_logs


@pytest.mark.parametrize("cmd", sorted(MISSING))
def test_empty_message_logs_both_errors_and_is_dropped(
        cmd: int, caplog: pytest.LogCaptureFixture) -> None:
    event, logs = check_both(build(cmd, []), caplog)
    assert event is None
    assert logs == [(logging.ERROR, "Unable to initialize genl attribute"),
                    (logging.ERROR, MISSING[cmd])]


@pytest.mark.parametrize(("cmd", "drop"), [
    (C.MPTCP_EVENT_CREATED, "MPTCP_ATTR_SPORT"),
    (C.MPTCP_EVENT_ESTABLISHED, "MPTCP_ATTR_DADDR4"),
    (C.MPTCP_EVENT_CLOSED, "MPTCP_ATTR_TOKEN"),
    (C.MPTCP_EVENT_ANNOUNCED, "MPTCP_ATTR_REM_ID"),
    (C.MPTCP_EVENT_REMOVED, "MPTCP_ATTR_REM_ID"),
    (C.MPTCP_EVENT_SUB_ESTABLISHED, "MPTCP_ATTR_BACKUP"),
    (C.MPTCP_EVENT_SUB_CLOSED, "MPTCP_ATTR_DPORT"),
    (C.MPTCP_EVENT_SUB_PRIORITY, "MPTCP_ATTR_SADDR4"),
    (C.MPTCP_EVENT_LISTENER_CREATED, "MPTCP_ATTR_SPORT"),
    (C.MPTCP_EVENT_LISTENER_CLOSED, "MPTCP_ATTR_SADDR4"),
])
def test_missing_required_attribute_drops_the_event(
        cmd: int, drop: str, caplog: pytest.LogCaptureFixture) -> None:
    attrs = [a for a in FULL_V4 + [("MPTCP_ATTR_BACKUP", 0)] if a[0] != drop]
    event, logs = check_both(build(cmd, attrs), caplog)
    assert event is None
    assert logs == [(logging.ERROR, MISSING[cmd])]


def test_wrong_length_is_logged_and_treated_as_absent(
        caplog: pytest.LogCaptureFixture) -> None:
    token = struct.pack("=I", 5)
    # REM_ID sent as 2 bytes: logged, ignored, so REMOVED lacks it.
    data = raw_message(C.MPTCP_EVENT_REMOVED,
                       [(C.MPTCP_ATTR_TOKEN, token), (C.MPTCP_ATTR_REM_ID, b"\x01\x00")])
    event, logs = check_both(data, caplog)
    assert event is None
    assert logs == [(logging.ERROR, "Attribute length (2) is not the expected length (1)"),
                    (logging.ERROR, MISSING[C.MPTCP_EVENT_REMOVED])]
    # An optional attribute of the wrong size does not drop the event.
    data = raw_message(C.MPTCP_EVENT_REMOVED, [
        (C.MPTCP_ATTR_TOKEN, token), (C.MPTCP_ATTR_REM_ID, b"\x01"),
        (C.MPTCP_ATTR_FAMILY, b"\x02\x00\x00\x00")])
    event, logs = check_both(data, caplog)
    assert event == ev.AddressRemoved(Token(5), AddressId(1))
    assert logs == [(logging.ERROR, "Attribute length (4) is not the expected length (2)")]


def test_unknown_attribute_is_logged_at_info_and_skipped(
        caplog: pytest.LogCaptureFixture) -> None:
    data = raw_message(C.MPTCP_EVENT_CLOSED, [
        (C.MPTCP_ATTR_TOKEN, struct.pack("=I", 77)), (42, b"abcd"), (0, b"")])
    event, logs = check_both(data, caplog)
    assert event == ev.ConnectionClosed(Token(77))
    assert logs == [(logging.INFO, "Unknown MPTCP genl attribute: 42"),
                    (logging.INFO, "Unknown MPTCP genl attribute: 0")]


@pytest.mark.parametrize("cmd", [0, 4, 5, 8, 9, 12, 14, 17, 255])
def test_unknown_event_is_logged(cmd: int, caplog: pytest.LogCaptureFixture) -> None:
    event, logs = check_both(build(cmd, [("MPTCP_ATTR_TOKEN", 1)]), caplog)
    assert event is None
    assert logs == [(logging.ERROR, f"Unhandled MPTCP event: {cmd}")]


def test_nested_and_byteorder_flag_bits_are_ignored_in_the_type() -> None:
    data = raw_message(C.MPTCP_EVENT_CLOSED,
                       [(C.MPTCP_ATTR_TOKEN | 0x4000, struct.pack("=I", 3))])
    ref, lean = both(data)
    assert ref == lean == ev.ConnectionClosed(Token(3))


def test_last_duplicate_attribute_wins_in_both() -> None:
    data = raw_message(C.MPTCP_EVENT_CLOSED, [
        (C.MPTCP_ATTR_TOKEN, struct.pack("=I", 1)), (C.MPTCP_ATTR_TOKEN, struct.pack("=I", 2))])
    ref, lean = both(data)
    assert ref == lean == ev.ConnectionClosed(Token(2))


# -- datagrams ---------------------------------------------------------------------


def test_datagram_with_several_messages_keeps_their_order() -> None:
    msgs = [bytes.fromhex(rec["hex"]) for _, rec in CAPTURES[:6]]
    data = b"".join(msgs)
    assert decode_datagram(data) == [decode_message(m) for m in msgs]


def test_enobufs_error_message_is_an_overrun() -> None:
    err = struct.pack("=IHHIIi", 36, 2, 0, 0, 0, -errno.ENOBUFS) + b"\0" * 16
    closed = build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", 4)])
    assert decode_datagram(err + closed) == [OVERRUN, ev.ConnectionClosed(Token(4))]
    other = struct.pack("=IHHIIi", 36, 2, 0, 0, 0, -errno.EINVAL) + b"\0" * 16
    assert decode_datagram(other) == []


def test_truncated_datagram_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    data = bytes.fromhex(CAPTURES[0][1]["hex"])
    caplog.set_level(logging.DEBUG, LOGGER)
    assert decode_datagram(data[:-3]) == []
    assert decode_datagram(data[:10]) == []
    assert any("Unable to decode MPTCP event message" in m for _, m in logs_of(caplog))


# -- the reader's receive path, without a kernel -------------------------------------


class _Overrunning:
    """A stand-in socket: ENOBUFS once, then the queued datagrams."""

    def __init__(self, datagrams: list[bytes], drops_while_full: int = 0) -> None:
        self.items: list[bytes | OSError] = [OSError(errno.ENOBUFS, "No buffer space")]
        self.items += datagrams
        self.drops = 1
        self.drops_while_full = drops_while_full

    def recv_into(self, buf: bytearray) -> int:
        if not self.items:
            raise BlockingIOError
        item = self.items.pop(0)
        if isinstance(item, OSError):
            raise item
        # The queue is not empty yet: the kernel drops more, silently.
        self.drops += self.drops_while_full
        buf[:len(item)] = item
        return len(item)

    def getsockopt(self, level: int, name: int, size: int) -> bytes:
        assert (level, name) == (socket.SOL_SOCKET, 55)  # SO_MEMINFO
        return struct.pack("=9I", *[0] * 8, self.drops)[:size]


def test_reader_reports_an_overrun_and_keeps_reading(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    reader = EventReader(on_overrun=calls.append)
    datagrams = [bytes.fromhex(rec["hex"]) for _, rec in CAPTURES[:3]]
    reader._raw = cast(socket.socket, _Overrunning(datagrams))
    caplog.set_level(logging.WARNING, LOGGER)
    reader._on_readable()
    assert calls == [1] and reader.overruns == 1 and reader.overrun_pending
    warning = ("MPTCP event socket receive buffer overrun (ENOBUFS), events were lost; "
               "overrun #1, resynchronising")
    assert [r.getMessage() for r in caplog.records] == [warning]
    # Events after the overrun are delivered.
    assert reader.drain() == [decode_message(d) for d in datagrams]
    # A callback that raises is logged, not propagated.
    def broken(count: int) -> None:
        raise RuntimeError(count)

    reader.on_overrun = broken
    reader._raw = cast(socket.socket, _Overrunning([]))
    reader._on_readable()
    assert reader.overruns == 2


def test_drops_after_the_overrun_until_the_queue_is_empty_are_another_overrun(
        caplog: pytest.LogCaptureFixture) -> None:
    """The kernel reports one ENOBUFS per congestion: what it drops until
    the queue is empty again is seen from its drop counter, once drained."""
    calls: list[int] = []
    reader = EventReader(on_overrun=calls.append)
    datagrams = [bytes.fromhex(rec["hex"]) for _, rec in CAPTURES[:3]]
    reader._raw = cast(socket.socket, _Overrunning(datagrams, drops_while_full=2))
    caplog.set_level(logging.WARNING, LOGGER)
    reader._on_readable()
    assert calls == [1, 2]
    assert caplog.records[-1].getMessage() == (
        "MPTCP event socket receive buffer overrun (6 more event(s) lost while it was "
        "full), events were lost; overrun #2, resynchronising")
    # None dropped meanwhile: one overrun.
    reader._raw = cast(socket.socket, _Overrunning(datagrams))
    reader._on_readable()
    assert calls == [1, 2, 3]


class _Paused:
    """A stand-in socket whose queue overran while the reader was paused:
    its pending error is ENOBUFS until read (``SO_ERROR``)."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self.items = list(datagrams)
        self.error = errno.ENOBUFS
        self.asked = 0

    def recv_into(self, buf: bytearray) -> int:
        if not self.items:
            raise BlockingIOError
        item = self.items.pop(0)
        buf[:len(item)] = item
        return len(item)

    def getsockopt(self, level: int, name: int, size: int = 0) -> Any:
        if name == socket.SO_ERROR:
            self.asked += 1
            error, self.error = self.error, 0
            return error
        return struct.pack("=9I", *[0] * 8, 7)[:size]  # SO_MEMINFO: 7 dropped


def test_an_overrun_while_reading_is_paused_is_reported_before_the_backlog_is_through(
        caplog: pytest.LogCaptureFixture) -> None:
    """The backlog is full, so reading is paused, and the socket overruns
    meanwhile: the overrun is reported while the backlog is worked through
    (the resync starts then), not once it is (a full backlog under a flood
    took 1.3 s, and the path managers learnt that late what they had
    missed).  Asked once per list handed out, and not again once known."""
    calls: list[int] = []
    reader = EventReader(on_overrun=calls.append, max_pending=4)
    datagrams = [build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", i)]) for i in range(8)]
    fake = _Paused(datagrams)
    reader._raw = cast(socket.socket, fake)
    reader._on_readable()
    assert reader.backlog == 8 and calls == []
    caplog.set_level(logging.WARNING, LOGGER)
    assert reader.take(1) == [ev.ConnectionClosed(Token(0))]
    assert calls == [1] and reader.overrun_pending and fake.asked == 1
    assert caplog.records[-1].getMessage() == (
        "MPTCP event socket receive buffer overrun (ENOBUFS), events were lost; "
        "overrun #1, resynchronising")
    reader.take(1)
    assert fake.asked == 1  # known: not asked again until the queue is drained
    assert reader.take(32) == [ev.ConnectionClosed(Token(i)) for i in range(2, 8)]


async def test_reader_pauses_when_the_consumer_lags_and_resumes() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        b.setblocking(False)
        reader = EventReader(max_pending=4)
        reader._loop = asyncio.get_running_loop()
        reader._raw, reader._fd = b, b.fileno()
        reader._start_reading()
        closed = [build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", i)]) for i in range(10)]
        for d in closed:
            a.send(d)
        # The loop calls the reader, which reads what the socket holds and
        # stops reading once max_pending datagrams are waiting...
        async with asyncio.timeout(5):
            while not reader.backlog:
                await asyncio.sleep(0.001)
        assert reader.backlog == 10 and not reader._reading
        got = reader.take(3) + reader.take(4)
        assert reader.backlog == 3 and not reader._reading
        # ...and reads again once the backlog is a little shorter than that.
        got += reader.take(1)
        assert reader.backlog == 2 and reader._reading
        events = reader.events()
        got += [await asyncio.wait_for(anext(events), 5) for _ in range(2)]
        await events.aclose()
        assert got == [ev.ConnectionClosed(Token(i)) for i in range(10)]
        assert reader._reading
        reader._stop_reading()
    finally:
        a.close()
        b.close()


async def test_the_memory_of_a_burst_goes_back_once_it_is_worked_through(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog that reached TRIM_AFTER datagrams releases memory once it
    is empty (the set of closing tokens made anew, the heap trimmed), once;
    a smaller one does not."""
    from mptcpd.netlink import genl_events

    monkeypatch.setattr(genl_events, "TRIM_AFTER", 8)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    releases: list[int] = []
    try:
        b.setblocking(False)
        reader = EventReader()
        reader.release_memory = lambda: releases.append(len(reader.closing))
        reader._loop = asyncio.get_running_loop()
        reader._raw, reader._fd = b, b.fileno()
        reader._start_reading()
        batches = reader.batches()

        async def handed_out(count: int) -> list[ev.Event]:
            got: list[ev.Event] = []
            while len(got) < count:
                got += await asyncio.wait_for(anext(batches), 5)
            return got

        for i in range(10):
            a.send(build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", i)]))
        grown = reader.closing
        got = await handed_out(10)
        assert got == [ev.ConnectionClosed(Token(i)) for i in range(10)]
        assert releases == []  # not while the burst's last batch is handled
        waiting = asyncio.ensure_future(anext(batches))
        for _ in range(3):
            await asyncio.sleep(0)
        assert releases == [0] and reader.closing == set() and reader.closing is not grown
        # A few events are no burst.
        for i in range(3):
            a.send(build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", 100 + i)]))
        got = await asyncio.wait_for(waiting, 5)
        got += await handed_out(3 - len(got))
        assert got == [ev.ConnectionClosed(Token(100 + i)) for i in range(3)]
        waiting = asyncio.ensure_future(anext(batches))
        for _ in range(3):
            await asyncio.sleep(0)
        assert releases == [0]
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await batches.aclose()
        reader._stop_reading()
    finally:
        a.close()
        b.close()


async def test_a_followed_reader_hands_out_lists_from_its_callback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """follow(): what waited before is handed out, then what arrives, in
    kernel order, in lists of YIELD_EVERY with a loop turn between two
    (what a list's consumer scheduled runs before the next list, even when
    it asks for one meanwhile); a burst's memory goes back once it is
    worked through."""
    from mptcpd.netlink import genl_events

    monkeypatch.setattr(genl_events, "YIELD_EVERY", 4)
    monkeypatch.setattr(genl_events, "TRIM_AFTER", 8)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    lists: list[list[ev.Event]] = []
    order: list[str] = []
    ends: list[BaseException | None] = []
    releases: list[int] = []

    def on_batch(batch: list[ev.Event]) -> None:
        lists.append(batch)
        order.append(f"list {len(lists)}")
        loop.call_soon(order.append, f"turn after {len(lists)}")
        reader._deliver()  # called back while a list is handled: nothing nested

    try:
        b.setblocking(False)
        reader = EventReader()
        reader.release_memory = lambda: releases.append(1)
        reader._loop = loop
        reader._raw, reader._fd = b, b.fileno()
        reader._start_reading()
        a.send(build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", 0)]))
        reader.fill()  # received before anyone follows
        reader.follow(on_batch, ends.append)
        with pytest.raises(RuntimeError, match="already followed"):
            reader.follow(on_batch, ends.append)
        for i in range(1, 10):
            a.send(build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", i)]))
        async with asyncio.timeout(5):
            while sum(map(len, lists)) < 10 or not releases:
                await asyncio.sleep(0.001)
        assert [e for batch in lists for e in batch] == \
            [ev.ConnectionClosed(Token(i)) for i in range(10)]
        assert all(len(batch) <= 4 for batch in lists)
        # The nine that came together: one list a loop turn.
        assert [len(batch) for batch in lists[1:]] == [4, 4, 1]
        for n in (2, 3):
            assert order.index(f"turn after {n}") < order.index(f"list {n + 1}")
        assert releases == [1] and ends == []
        reader.close()
        assert len(ends) == 1 and ends[0] is None
    finally:
        a.close()
        b.close()


async def test_a_followed_reader_whose_consumer_raises_ends_with_the_exception() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ends: list[BaseException | None] = []
    seen: list[ev.Event] = []

    def on_batch(batch: list[ev.Event]) -> None:
        seen.extend(batch)
        raise RuntimeError("consumer bug")

    try:
        b.setblocking(False)
        reader = EventReader()
        with pytest.raises(RuntimeError, match="not open"):
            reader.follow(on_batch, ends.append)
        reader._loop = asyncio.get_running_loop()
        reader._raw, reader._fd = b, b.fileno()
        reader._start_reading()
        reader.follow(on_batch, ends.append)
        a.send(build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", 7)]))
        async with asyncio.timeout(5):
            while not ends:
                await asyncio.sleep(0.001)
        assert seen == [ev.ConnectionClosed(Token(7))]
        assert isinstance(ends[0], RuntimeError) and str(ends[0]) == "consumer bug"
        # Following stopped: what arrives now waits to be taken; closing
        # does not end it twice.
        a.send(build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", 8)]))
        async with asyncio.timeout(5):
            while not reader.backlog:
                await asyncio.sleep(0.001)
        assert seen == [ev.ConnectionClosed(Token(7))]
        assert reader.take(10) == [ev.ConnectionClosed(Token(8))]
        reader.close()
        assert len(ends) == 1
    finally:
        a.close()
        b.close()


def test_release_memory_can_be_called() -> None:
    """glibc's malloc_trim where there is one; no error either way."""
    from mptcpd.netlink import genl_events

    genl_events.release_memory()
    genl_events.release_memory()


# -- learnt layouts -------------------------------------------------------------


def test_a_learnt_layout_decodes_as_the_walk_does(caplog: pytest.LogCaptureFixture) -> None:
    """The second message of a kind is read through the layout learnt from
    the first; a message of the same length whose headers differ (here an
    attribute's type changed to an unknown one) takes the walk again, with
    the walk's log line."""
    from mptcpd.netlink import event_codec

    data = by_what("CREATED", "daddr4=")
    first = decode_message(data)
    key = (data[16], len(data) - 20)
    assert event_codec._templates.get(key) is not None
    assert decode_message(data) == first == decode(pyroute2_parse(data))
    changed = bytearray(data)
    struct.pack_into("=H", changed, 20 + 2, 99)  # the first attribute's type
    caplog.set_level(logging.DEBUG, LOGGER)
    got = decode_message(bytes(changed))
    assert "Unknown MPTCP genl attribute: 99" in caplog.text
    assert got == decode(pyroute2_parse(bytes(changed)))


def test_the_slots_filled_are_the_fields_of_the_event() -> None:
    """Events built from a learnt layout fill their slots directly; a class
    whose fields are not the ones filled, in order, is refused at import
    (a field added to an event must be filled too)."""
    from mptcpd.netlink import event_codec

    for cls in (ev.ConnectionCreated, ev.ConnectionEstablished):
        assert len(event_codec._slot_setters(cls, event_codec._CONNECTION_FIELDS)) == 10
    for cls in (ev.SubflowEstablished, ev.SubflowClosed, ev.SubflowPriority):
        assert len(event_codec._slot_setters(cls, event_codec._SUBFLOW_FIELDS)) == 15
    with pytest.raises(RuntimeError, match="ConnectionCreated has fields"):
        event_codec._slot_setters(ev.ConnectionCreated, event_codec._CONNECTION_FIELDS[:-1])
    addr = event_codec._fast_sockaddr(ipaddress.ip_address("192.0.2.1"), 80)
    assert addr == SockAddr("192.0.2.1", 80) and hash(addr) == hash(SockAddr("192.0.2.1", 80))
    with pytest.raises(dataclasses.FrozenInstanceError):
        addr.port = 81  # type: ignore[misc]


@pytest.mark.parametrize("name", ["CREATED", "ESTABLISHED", "CLOSED", "SUB_ESTABLISHED",
                                  "SUB_CLOSED", "SUB_PRIORITY"])
def test_frequent_events_are_built_straight_from_a_learnt_layout(name: str) -> None:
    """The events of every connection are built from the learnt layout's
    values without the walk's dict (see ``_builder``), as the walk builds
    them."""
    from mptcpd.netlink import event_codec

    for what, rec in CAPTURES:
        if what != name:
            continue
        data = bytes.fromhex(rec["hex"])
        walked = decode_message(data)
        template = event_codec._templates[(data[16], len(data) - 20)]
        assert template is not None and template.build is not None
        assert template.event(data, 20) == walked == decode(pyroute2_parse(data))


def test_a_layout_without_a_required_attribute_has_no_builder(
        caplog: pytest.LogCaptureFixture) -> None:
    """Every such message is logged as the walk logs it, learnt or not."""
    from mptcpd.netlink import event_codec

    data = build(C.MPTCP_EVENT_SUB_ESTABLISHED, [a for a in FULL_V4 if a[0] != "MPTCP_ATTR_DPORT"]
                 + [("MPTCP_ATTR_BACKUP", 0)])
    caplog.set_level(logging.DEBUG, LOGGER)
    assert decode_message(data) is None and decode_message(data) is None
    template = event_codec._templates[(data[16], len(data) - 20)]
    assert template is not None and template.build is None
    assert caplog.text.count("Required MPTCP_EVENT_SUB_* message attributes are missing.") == 2


def test_the_reader_knows_which_connections_the_kernel_closed() -> None:
    """A CLOSED received but not yet handed out marks its token closed (the
    command channel drops that connection's commands); handing it out, or
    draining, clears the mark."""
    reader = EventReader()
    datagrams = [build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", 7)]),
                 build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", 8)])]
    reader._raw = cast(socket.socket, _Overrunning(datagrams))
    reader._on_readable()
    assert reader.closed_tokens() == {7, 8}
    assert reader.take(1) == [ev.ConnectionClosed(Token(7))] and reader.closing == {8}
    reader.drain()
    assert reader.closing == set()


class _Queue:
    """A stand-in socket holding datagrams (no queue limit, unlike a local
    datagram socket)."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self.items = list(reversed(datagrams))

    def recv_into(self, buf: memoryview) -> int:
        if not self.items:
            raise BlockingIOError
        item = self.items.pop()
        buf[:len(item)] = item
        return len(item)


def test_the_backlog_spans_chunks_and_gives_them_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Datagrams are held as received, chunk after chunk; a chunk read to its
    end is unmapped, and the last one is written from its start again."""
    from mptcpd.netlink import genl_events

    monkeypatch.setattr(genl_events, "CHUNK_SIZE", 3 * genl_events.DATAGRAM_ROOM)
    created = by_what("CREATED", "daddr4=")
    datagrams = [build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", i)]) if i % 2 else created
                 for i in range(6000)]
    expected = [decode_message(d) for d in datagrams]
    reader = EventReader()
    reader._raw = cast(socket.socket, _Queue(datagrams[:1000]))
    reader._on_readable()  # 1024 datagrams at most per call
    reader._raw = cast(socket.socket, _Queue(datagrams[1000:]))
    for _ in range(10):
        reader._on_readable()
    assert reader.backlog == 6000 and reader.closing == set(range(1, 6000, 2))
    chunks = list(reader._chunks)
    assert len(chunks) >= 3
    got: list[ev.Event] = []
    while batch := reader.take(32):
        got += batch
    assert got == expected and reader.backlog == 0 and reader.closing == set()
    # Every chunk but the last is unmapped; the last is written from its start.
    assert [c.mem.closed for c in chunks] == [True] * (len(chunks) - 1) + [False]
    assert list(reader._chunks) == chunks[-1:] and chunks[-1].wpos == 0
    reader._raw = cast(socket.socket, _Queue(datagrams[:3]))
    reader._on_readable()
    assert reader.take(32) == expected[:3] and chunks[-1].wpos == 0


def test_a_closed_connection_in_a_datagram_of_several_messages_is_known() -> None:
    """The kernel sends one event per datagram, but a datagram of several
    messages is read whole: a CLOSED after another message counts too."""
    created = by_what("CREATED", "daddr4=")
    closed = build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", 9)])
    reader = EventReader()
    reader._raw = cast(socket.socket, _Queue([created + closed]))
    reader._on_readable()
    assert reader.closed_tokens() == {9}
    assert reader.take(1) == [decode_message(created), ev.ConnectionClosed(Token(9))]
    assert reader.closing == set()


def test_a_close_is_handed_out_after_the_waiting_events_of_a_connection() -> None:
    """What the resync asks of the reader: the connections the datagrams
    received before a mark are about, and a ConnectionClosed handed out
    right after the last of them (the token counts as closed until then)."""
    def created(token: int) -> bytes:
        return build(C.MPTCP_EVENT_CREATED, [("MPTCP_ATTR_TOKEN", token)] + FULL_V4[1:])

    first = [created(5), created(6), build(C.MPTCP_EVENT_CLOSED, [("MPTCP_ATTR_TOKEN", 6)]),
             created(7)]
    reader = EventReader()
    reader._raw = cast(socket.socket, _Queue(first))
    mark = reader.fill()
    assert mark == 4
    reader._raw = cast(socket.socket, _Queue([created(8)]))  # after the mark
    assert reader.fill() == 5
    assert reader.take(1) == [decode_message(first[0])]  # 5's CREATED is handed out
    assert reader.queued_tokens(mark) == {7: 3}  # 6 is closing
    assert reader.queued_tokens(mark, {7}) == {}
    reader.close_after(7, 3)
    assert reader.closed_tokens() == {6, 7}
    with pytest.raises(ValueError):
        reader.close_after(5, 0)  # handed out already
    got = reader.take(32)
    assert got == [decode_message(d) for d in first[1:]] + [ev.ConnectionClosed(Token(7)),
                                                             decode_message(created(8))]
    assert reader.closing == set() and reader.backlog == 0


def test_the_subflows_established_before_a_mark_are_found_and_stay_queued() -> None:
    """What the resync asks of the reader for subflows: the SUB_ESTABLISHED
    events of the datagrams received before a mark and not yet handed out,
    decoded (a datagram of several messages too); they are still handed
    out in their turn."""
    def sub(cmd: int, port: int) -> bytes:
        return build(cmd, [a if a[0] != "MPTCP_ATTR_SPORT" else (a[0], port) for a in FULL_V4]
                     + [("MPTCP_ATTR_BACKUP", 0)])

    first = [sub(C.MPTCP_EVENT_SUB_ESTABLISHED, 40001), sub(C.MPTCP_EVENT_SUB_ESTABLISHED, 40002),
             sub(C.MPTCP_EVENT_SUB_CLOSED, 40002),
             sub(C.MPTCP_EVENT_SUB_CLOSED, 40003) + sub(C.MPTCP_EVENT_SUB_ESTABLISHED, 40004)]
    reader = EventReader()
    reader._raw = cast(socket.socket, _Queue(first))
    mark = reader.fill()
    reader._raw = cast(socket.socket, _Queue([sub(C.MPTCP_EVENT_SUB_ESTABLISHED, 40005)]))
    reader.fill()
    assert reader.take(1) == [decode_message(first[0])]  # handed out already
    found = reader.queued_subflows_established(mark)
    assert [e.laddr.port for e in found] == [40002, 40004]
    assert all(type(e) is ev.SubflowEstablished for e in found)
    got = reader.take(32)
    assert [(type(e).__name__, e.laddr.port) for e in got] == [  # type: ignore[union-attr]
        ("SubflowEstablished", 40002), ("SubflowClosed", 40002), ("SubflowClosed", 40003),
        ("SubflowEstablished", 40004), ("SubflowEstablished", 40005)]
    assert reader.queued_subflows_established(reader.received) == []
