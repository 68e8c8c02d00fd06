"""What the fuzz tests share: hypothesis settings, a hang guard and a log
recorder."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from hypothesis import HealthCheck, settings

#: Settings of every fuzz test (the seed and derandomisation come from the
#: profile loaded in tests/conftest.py).
FUZZ = settings(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Recorder(logging.Handler):
    """Keeps every record it is handed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, name: str | None = None) -> list[tuple[int, str]]:
        """(level, message) of the records of logger ``name`` (all: None)."""
        return [(r.levelno, r.getMessage()) for r in self.records
                if name is None or r.name == name]


@contextmanager
def recording(*names: str) -> Iterator[Recorder]:
    """Record everything the loggers ``names`` log at any level, without
    passing it on, for the duration of the block."""
    rec = Recorder()
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(rec)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    try:
        yield rec
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(rec)
            logger.setLevel(level)
            logger.propagate = propagate


#: A case that runs this long is a hang (an infinite loop), not a slow case.
HANG_SECONDS = 20


class Hang(BaseException):
    """Raised in a case that does not finish within HANG_SECONDS."""


@contextmanager
def no_hang(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Raise :class:`Hang` in the block if it runs for more than
    ``seconds`` (SIGALRM: the main thread only; not nested)."""
    def alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"a case ran for more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
