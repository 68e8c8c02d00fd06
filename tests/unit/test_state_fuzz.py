"""Fuzzing addr_adv's state-file readers (hypothesis).

The earlier format (JSON, read once to migrate): random bytes; any JSON
value, alone or as ``"endpoints"``; state files as the plugin wrote them,
intact or with bytes changed, cut or appended; deep nesting; numbers JSON
cannot hold (``1e400``, ``Infinity``, 5 000 digits).  Properties (the
documented results): :func:`parse_state` returns address -> ID (1..255) or
raises :class:`ValueError`, never another exception and never hangs; what
the plugin wrote reads back as written.

The journal: random bytes; journals as :class:`Journal` writes them, with
random changes, intact or with bytes changed, cut or appended.
:func:`parse_journal` returns address -> ID (1..255) and the unfinished last
line, or raises :class:`ValueError`; what the plugin writes reads back as
the entries it was given, and a cut one holds no entry it was never
given.

The plugin's loader, reading a real file of either format, never raises
(it warns and takes nothing as its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptcpd.errors import KernelError
from mptcpd.types import Interface, SockAddr
from plugins.addr_adv import (
    JOURNAL_HEADER,
    AddressAdvertiser,
    Journal,
    legacy_state_file,
    parse_journal,
    parse_state,
    state_file,
)
from tests.unit.fuzz_support import FUZZ, no_hang, recording

#: The documented error of :func:`check`.
ALLOWED: tuple[type[BaseException], ...] = (ValueError,)


def check(data: bytes) -> dict[SockAddr, int]:
    """parse_state on ``data``: its result (checked) or ValueError."""
    with no_hang():
        result = parse_state(data)
    assert isinstance(result, dict)
    for addr, id in result.items():
        assert isinstance(addr, SockAddr) and type(id) is int and 1 <= id <= 255
    return result


def written(endpoints: dict[str, int]) -> bytes:
    """A state file as the plugin writes one (flush_state)."""
    return json.dumps({"endpoints": endpoints}).encode()


# -- strategies ------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
good = st.dictionaries(addresses, st.integers(1, 255), max_size=8)
odd_numbers = st.sampled_from(["1e400", "-1e400", "Infinity", "-Infinity", "NaN", "1.0",
                               "0", "256", "-1", "true", "null", "1" * 5000, '"1"'])


@st.composite
def near_misses(draw: st.DrawFn) -> bytes:
    endpoints = draw(good)
    text = written(endpoints).decode()
    if endpoints and draw(st.booleans()):  # one ID replaced by an odd number
        ip = draw(st.sampled_from(sorted(endpoints)))
        text = text.replace(f'"{ip}": {endpoints[ip]}', f'"{ip}": {draw(odd_numbers)}', 1)
    data = bytearray(text.encode())
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut] if draw(st.booleans()) else data) + draw(st.binary(max_size=4))


deep = st.builds(lambda n, opener, wrap: (('{"endpoints": ' if wrap else "") + opener * n).encode(),
                 st.integers(1, 200_000), st.sampled_from(["[", '{"a":', "[{}, "]),
                 st.booleans())
#: What :func:`check` takes: a state file's bytes.
CASES = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps({"endpoints": v}).encode()),
    good.map(written),
    near_misses(),
    deep,
)


# -- the tests --------------------------------------------------------------------------


@settings(FUZZ, max_examples=800)
@given(CASES)
def test_any_bytes_give_the_state_or_value_error(data: bytes) -> None:
    try:
        check(data)
    except ValueError:
        pass


@settings(FUZZ, max_examples=300)
@given(good)
def test_what_the_plugin_writes_reads_back(endpoints: dict[str, int]) -> None:
    assert check(written(endpoints)) == {SockAddr(ip): id for ip, id in endpoints.items()}


# -- the journal --------------------------------------------------------------------------


def check_journal(data: bytes) -> dict[SockAddr, int]:
    """parse_journal on ``data``: its entries (checked) or ValueError."""
    with no_hang():
        result, torn = parse_journal(data)
    assert isinstance(torn, bytes) and b"\n" not in torn and data.endswith(torn)
    for addr, id in result.items():
        assert isinstance(addr, SockAddr) and type(id) is int and 1 <= id <= 255
    return result


#: A run of changes: each the whole set of entries after it.
histories = st.lists(good, min_size=1, max_size=6)


#: Where the strategies have journals written (removed at exit).
_SCRATCH = tempfile.TemporaryDirectory(prefix="journal-fuzz-")


def journal_of(history: list[dict[str, int]]) -> bytes:
    """The file :class:`Journal` leaves after these changes."""
    journal = Journal(Path(_SCRATCH.name) / "j.journal")
    for entries in history:
        journal.update(dict(entries))
    data = journal.path.read_bytes()
    journal.close()
    return data


@st.composite
def damaged_journals(draw: st.DrawFn) -> bytes:
    data = bytearray(journal_of(draw(histories)))
    for _ in range(draw(st.integers(0, 3))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut] if draw(st.booleans()) else data) + draw(st.binary(max_size=4))


@settings(FUZZ, max_examples=300)
@given(st.one_of(st.binary(max_size=200), damaged_journals(),
                 st.binary(max_size=100).map(lambda b: JOURNAL_HEADER + b)))
def test_any_bytes_give_the_journal_or_value_error(data: bytes) -> None:
    try:
        check_journal(data)
    except ValueError:
        pass


@settings(FUZZ, max_examples=100)
@given(histories, st.data())
def test_what_the_journal_writes_reads_back_and_cut_reads_as_before(
        history: list[dict[str, int]], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "j.journal")
        states: list[dict[SockAddr, int]] = [{}]
        for entries in history:
            journal.update(dict(entries))
            states.append({SockAddr(ip): id for ip, id in entries.items()})
            written = journal.path.read_bytes()
            assert check_journal(written) == states[-1]
        journal.close()
        assert check_journal(journal.path.read_bytes()) == states[-1]
    # Cut anywhere (a crash of the machine): no entry it was never given.
    cut = data.draw(st.integers(0, len(written)))
    given = {item for state in states for item in state.items()}
    assert set(check_journal(written[:cut]).items()) <= given


#: One change to a journal: the whole set of entries (``Journal.update``),
#: or one entry set or (None) removed (``Journal.record``); and whether the
#: disk is full meanwhile (a write cut short, then failing).
changes = st.tuples(
    st.one_of(good, st.tuples(st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1"]),
                              st.one_of(st.none(), st.integers(1, 255)))),
    st.booleans())


@contextlib.contextmanager
def disk_full() -> Iterator[None]:
    """The first ``os.write`` writes half its bytes, the others fail."""
    real = os.write
    calls = []

    def write(fd: int, data: Any) -> int:
        calls.append(fd)
        if len(calls) == 1:
            return real(fd, bytes(data)[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    os.write = write
    try:
        yield
    finally:
        os.write = real


@settings(FUZZ, max_examples=100)
@given(st.lists(changes, min_size=1, max_size=12))
def test_whole_and_single_changes_and_failed_writes_read_back(
        history: list[tuple[Any, bool]]) -> None:
    """Whatever the mix of whole and single changes, and of writes that fail
    (cut short): once a write works again the file reads back as the
    entries; while they fail it reads as one of the earlier states."""
    with tempfile.TemporaryDirectory() as tmp, recording("mptcpd.plugins.addr_adv"):
        journal = Journal(Path(tmp) / "j.journal")
        model: dict[str, int] = {}
        states: list[dict[SockAddr, int]] = [{}]
        for change, full in history:
            if isinstance(change, dict):
                model = dict(change)
                apply = functools.partial(journal.update, dict(change))
            else:
                text, id = change
                if id is None:
                    model.pop(text, None)
                else:
                    model[text] = id
                apply = functools.partial(journal.record, text, id)
            wanted = {SockAddr(ip): id for ip, id in model.items()}
            if full:
                with disk_full():
                    apply()
                if journal.path.exists():  # a cut line, or lines of a change cut
                    given = {item for state in (*states, wanted) for item in state.items()}
                    assert set(check_journal(journal.path.read_bytes()).items()) <= given
            else:
                apply()
                assert check_journal(journal.path.read_bytes()) == wanted
                assert journal.entries == model
            states.append(wanted)
        journal.close()  # written whole if the last change failed
        assert check_journal(journal.path.read_bytes()) == states[-1]


@settings(FUZZ, max_examples=100)
@given(st.one_of(st.binary(max_size=100), near_misses(), odd_numbers.map(str.encode),
                 damaged_journals()),
       st.booleans())
def test_the_plugin_reads_any_file_without_raising(data: bytes, legacy: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.environ.get("MPTCPD_STATE_DIR")
        os.environ["MPTCPD_STATE_DIR"] = tmp
        try:
            (legacy_state_file() if legacy else state_file()).write_bytes(data)
            with recording("mptcpd.plugins.addr_adv"):
                result = AddressAdvertiser()._load_state()
        finally:
            if saved is None:
                del os.environ["MPTCPD_STATE_DIR"]
            else:
                os.environ["MPTCPD_STATE_DIR"] = saved
    assert isinstance(result, dict)


#: One step of the plugin's life: an address reported (on a link with or
#: without carrier) or gone, a carrier lost or back, one of the first
#: unanswered adds or removes answered (done, or refused by the kernel).
steps = st.one_of(
    st.tuples(st.just("new"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("del"), st.integers(0, 2)),
    st.tuples(st.just("answer"), st.sampled_from(["add", "remove"]), st.none(),
              st.just(0)),
    st.tuples(st.sampled_from(["down", "up"]), st.integers(0, 1)),
    st.tuples(st.just("answer"), st.sampled_from(["add", "remove"]),
              st.sampled_from([None, errno.EEXIST, errno.ERANGE, errno.ENOENT]),
              st.integers(0, 2)),
)


async def _live(history: list[tuple[Any, ...]]) -> None:
    from tests.unit.test_addr_adv import FakePM  # noqa: PLC0415 (a test module)
    addrs = [SockAddr(ipaddress.ip_address(ip))
             for ip in ("192.0.2.1", "2001:db8:1::1", "198.51.100.1")]
    links = [((2, "c1"), (addrs[0], addrs[1])), ((3, "c2"), (addrs[2],))]

    def interface(link: int, carrier: bool) -> Interface:
        (index, name), on = links[link]
        return Interface(index=index, name=name, flags=0x41 if carrier else 0x1, addrs=on)

    pm: Any = FakePM()
    adv = AddressAdvertiser()
    adv.init(pm)
    pm.futures["dump"][-1].set_result([])
    await asyncio.sleep(0)
    for step in history:
        if step[0] == "new":
            adv.new_local_address(pm, interface(step[1] // 2, step[2]), addrs[step[1]])
        elif step[0] == "del":
            adv.delete_local_address(pm, interface(step[1] // 2, True), addrs[step[1]])
        elif step[0] == "down":
            adv.link_down(pm, interface(step[1], False))
        elif step[0] == "up":
            adv.link_up(pm, interface(step[1], True))
        else:
            pending = [f for f in pm.futures.get(step[1], []) if not f.done()]
            if pending:
                future = pending[min(step[3], len(pending) - 1)]
                if step[2] is None:
                    future.set_result(None)
                else:
                    future.set_exception(KernelError(step[1], step[2], None))
        await asyncio.sleep(0)
        # What the file says is what may be in the kernel, as worked out whole.
        entries, torn = parse_journal(state_file().read_bytes())
        assert torn == b""
        assert entries == {SockAddr(ip): id for ip, id in adv._state().items()}
    adv.flush_state()  # compacted: the same
    assert parse_journal(state_file().read_bytes())[0] == \
        {SockAddr(ip): id for ip, id in adv._state().items()}


@settings(FUZZ, max_examples=400)
@given(st.lists(steps, max_size=20))
def test_the_file_follows_each_change_as_the_whole_state_says(
        history: list[tuple[Any, ...]]) -> None:
    """Addresses come and go (the same one again while its endpoint is on its
    way out), carriers flap, the kernel answers or refuses in any order:
    after every step the journal, written one change at a time, says what
    the plugin's whole state says may be in the kernel."""
    with tempfile.TemporaryDirectory() as tmp, recording("mptcpd.plugins.addr_adv"):
        saved = os.environ.get("MPTCPD_STATE_DIR")
        os.environ["MPTCPD_STATE_DIR"] = tmp
        try:
            asyncio.run(_live(history))
        finally:
            if saved is None:
                del os.environ["MPTCPD_STATE_DIR"]
            else:
                os.environ["MPTCPD_STATE_DIR"] = saved


# -- regressions ----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b'{"endpoints": {"192.0.2.1": 1e400}}', b'{"endpoints": {"192.0.2.1": Infinity}}',
    b"[" * 994, b'{"endpoints": ' + b"[" * 100_000,
    b"\xff", b'{"endpoints": {"192.0.2.1": 1}}\xff', b"\xef\xbb\xbf{}",
    b'{"endpoints": {"192.0.2.1": ' + b"1" * 5000 + b"}}",
], ids=["1e400", "Infinity", "nested 994", "nested 100000", "not UTF-8",
        "not UTF-8 after", "BOM", "5000 digits"])
def test_regressions(data: bytes) -> None:
    """UTF-8 that is not (b"\\xff") raised UnicodeDecodeError out of
    _load_state: addr_adv's plugin_init failed."""
    with pytest.raises(ValueError):
        check(data)


def test_a_file_that_is_not_utf8_is_warned_about(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPTCPD_STATE_DIR", str(tmp_path))
    legacy_state_file().write_bytes(b'{"endpoints": {"192.0.2.1": 1}}\xff')
    with recording("mptcpd.plugins.addr_adv") as rec:
        assert AddressAdvertiser()._load_state() == {}
    assert any("Ignoring the corrupt" in line and "utf-8" in line for _, line in rec.lines())


def test_equal_addresses_spelt_twice_are_corrupt() -> None:
    address = ipaddress.ip_address("2001:db8::1")
    data = b'{"endpoints": {"2001:db8::1": 1, "2001:db8:0::1": 2}}'
    with pytest.raises(ValueError):
        check(data)
    assert check(written({str(address): 3})) == {SockAddr(address): 3}
