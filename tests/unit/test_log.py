"""Log destinations."""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from systemd.journal import JournalHandler  # type: ignore[import-untyped]

from mptcpd.log import Tally, reset_logging, setup_logging

log = logging.getLogger("mptcpd.test")
plugin_log = logging.getLogger("mptcpd.plugins.sample")


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    reset_logging()
    yield
    reset_logging()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="mptcpd-log-") as name:
        yield Path(name)


@pytest.fixture
def dgram_server(short_dir: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(short_dir / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    try:
        yield path, server
    finally:
        server.close()


def ours(handler: logging.Handler) -> list[logging.Handler]:
    return [h for h in logging.getLogger("mptcpd").handlers if h is handler]


def test_stderr_bare_messages(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("stderr")
    log.info("hello %s", "world")
    log.warning("careful")
    log.error("broken")
    log.debug("hidden")
    assert capsys.readouterr() == ("", "hello world\ncareful\nbroken\n")


def test_stderr_debug_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("stderr", debug=True)
    log.debug("value %d", 7)
    log.info("plain")
    assert capsys.readouterr().err == (
        "test_log.py:test_stderr_debug_prefix() value 7\nplain\n"
    )


def test_debug_covers_the_whole_tree(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("stderr", debug=True)
    plugin_log.debug("from a plugin")
    logging.getLogger("mptcpd.pm.network_monitor").debug("from the library")
    assert capsys.readouterr().err.splitlines() == [
        "test_log.py:test_debug_covers_the_whole_tree() from a plugin",
        "test_log.py:test_debug_covers_the_whole_tree() from the library",
    ]


def test_stderr_follows_sys_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    setup_logging("stderr")

    class Sink:
        text = ""

        def write(self, data: str) -> None:
            self.text += data

        def flush(self) -> None:
            pass

    sink = Sink()
    monkeypatch.setattr(sys, "stderr", sink)
    log.warning("late")
    assert sink.text == "late\n"


def test_exceptions_include_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("stderr")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    err = capsys.readouterr().err
    assert err.startswith("failed\nTraceback")
    assert "RuntimeError: boom" in err


def test_null_discards_everything(capsys: pytest.CaptureFixture[str]) -> None:
    handler = setup_logging("null", debug=True)
    assert isinstance(handler, logging.NullHandler)
    log.error("gone")
    log.debug("gone")
    assert capsys.readouterr() == ("", "")


def test_setup_again_replaces_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    first = setup_logging("stderr")
    second = setup_logging("null")
    assert ours(first) == [] and ours(second) == [second]
    log.error("gone")
    assert capsys.readouterr().err == ""
    assert logging.getLogger("mptcpd").level == logging.INFO


def test_unknown_destination() -> None:
    with pytest.raises(ValueError):
        setup_logging("file")


def test_syslog_datagram(dgram_server: tuple[str, socket.socket]) -> None:
    path, server = dgram_server
    handler = setup_logging("syslog", debug=True, syslog_address=path)
    assert isinstance(handler, logging.handlers.SysLogHandler)
    pid = os.getpid()
    log.info("started")
    assert server.recv(4096) == f"<30>mptcpd[{pid}]: started".encode()
    log.error("failed")
    assert server.recv(4096) == f"<27>mptcpd[{pid}]: failed".encode()
    log.warning("hmm")
    assert server.recv(4096) == f"<28>mptcpd[{pid}]: hmm".encode()
    log.debug("detail")
    assert server.recv(4096) == (
        f"<31>mptcpd[{pid}]: test_log.py:test_syslog_datagram() detail".encode()
    )
    handler.close()


def test_syslog_unavailable_becomes_null(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = setup_logging("syslog", syslog_address=str(short_dir / "missing"))
    assert isinstance(handler, logging.NullHandler)
    log.error("nowhere")
    assert capsys.readouterr() == ("", "")


def test_journal_fields() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def sender(MESSAGE: str, **fields: Any) -> None:  # journal.send's name
        sent.append((MESSAGE, fields))

    handler = setup_logging("journal", debug=True, journal_sender=sender)
    assert isinstance(handler, JournalHandler)
    log.warning("watch out")
    log.debug("fine detail")
    (msg1, fields1), (msg2, fields2) = sent
    assert msg1 == "watch out"
    assert fields1["SYSLOG_IDENTIFIER"] == "mptcpd"
    assert fields1["PRIORITY"] == "4"
    assert fields1["CODE_FUNC"] == "test_journal_fields"
    assert msg2 == "test_log.py:test_journal_fields() fine detail"
    assert fields2["PRIORITY"] == "7"


def test_journal_chosen_when_socket_present(
    dgram_server: tuple[str, socket.socket],
) -> None:
    path, _ = dgram_server
    handler = setup_logging("journal", journal_socket=path)
    assert isinstance(handler, JournalHandler)


def test_journal_unavailable_becomes_null(short_dir: Path) -> None:
    handler = setup_logging("journal", journal_socket=str(short_dir / "missing"))
    assert isinstance(handler, logging.NullHandler)


def test_journal_without_systemd_python_becomes_null(
    monkeypatch: pytest.MonkeyPatch, dgram_server: tuple[str, socket.socket]
) -> None:
    monkeypatch.setitem(sys.modules, "systemd.journal", None)
    handler = setup_logging("journal", journal_socket=dgram_server[0])
    assert isinstance(handler, logging.NullHandler)


def test_loggers_outside_mptcpd_untouched() -> None:
    other = logging.getLogger("someone.else")
    before = (list(other.handlers), other.level)
    setup_logging("stderr", debug=True)
    assert (list(other.handlers), other.level) == before
    assert logging.getLogger().handlers == logging.getLogger().handlers


def test_reset_logging_restores_propagation() -> None:
    setup_logging("null")
    assert logging.getLogger("mptcpd").propagate is False
    reset_logging()
    root = logging.getLogger("mptcpd")
    assert root.propagate is True and root.level == logging.NOTSET
    assert not [h for h in root.handlers if getattr(h, "_mptcpd_handler", False)]


def test_syslog_going_away_is_silent(
    dgram_server: tuple[str, socket.socket], capsys: pytest.CaptureFixture[str]
) -> None:
    path, server = dgram_server
    setup_logging("syslog", syslog_address=path)
    server.close()
    os.unlink(path)
    log.error("lost")
    assert capsys.readouterr() == ("", "")


def test_a_tally_logs_the_first_of_each_kind_and_counts_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    """Per kind, the first ``limit`` messages at their level, the rest at
    DEBUG (with the caller as their function), and one summary per kind
    that went past its limit; a summary starts the count again."""
    caplog.set_level(logging.DEBUG, logger="mptcpd.test")
    tally = Tally(logging.getLogger("mptcpd.test"), limit=3)

    def closed(number: int) -> None:
        tally.log(logging.WARNING, "connection(s) closed", "Connection %d closed.", number)

    for number in range(5):
        closed(number)
    tally.log(logging.INFO, "connection(s) adopted", "Connection %d adopted.", 9)
    tally.summary()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "Connection 0 closed."), (logging.WARNING, "Connection 1 closed."),
        (logging.WARNING, "Connection 2 closed."), (logging.DEBUG, "Connection 3 closed."),
        (logging.DEBUG, "Connection 4 closed."), (logging.INFO, "Connection 9 adopted."),
        (logging.WARNING, "2 more connection(s) closed (logged at debug level)."),
    ]
    assert caplog.records[3].funcName == "closed"
    caplog.clear()
    closed(5)
    tally.summary()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "Connection 5 closed.")]
