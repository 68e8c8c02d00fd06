"""Long fuzz runs of the parsers that read outside input.

The unit suite fuzzes each parser with a few thousand cases per run; this
script runs many more (100 000 per parser by default) with hypothesis, in
process, and reports per parser: cases run, how many ended in a result and
how many in the parser's documented error, and any other exception or hang
(with hypothesis's shrunk example).  Exit status 1 if any parser failed.

Each parser's strategy, property and documented errors are those of its
unit-test module (``CASES``, ``check``, ``ALLOWED`` in
``tests/unit/test_*_fuzz.py``), so the suite's short runs and this long one
test the same things.  Adding a parser: give its test module those three
names and append ``Target(name, *_from_test(module))`` to ``TARGETS`` (or a
:class:`Target` with its own functions: the strategy, the call, the
documented errors; imported lazily, so one broken target does not stop the
others).

Every case runs under a SIGALRM guard: one that takes more than
``HANG_SECONDS`` is a hang, reported like any other failure with
hypothesis's shrunk example.  The seed is printed first; ``--seed`` replays
a run.

Usage::

    python bench/fuzz_long.py [--cases N] [--seed S] [--target NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

#: A case that runs this long is a hang, not a slow case.
HANG_SECONDS = 20.0


class Hang(BaseException):
    """Raised in a case that runs for more than HANG_SECONDS."""


@dataclass(frozen=True)
class Target:
    name: str
    #: builds the strategy of the inputs (called once, when the target runs)
    strategy: Callable[[], st.SearchStrategy[Any]]
    #: the function under test, given one input
    call: Callable[[Any], object]
    #: the exceptions the function documents (called once, when the target runs)
    allowed: Callable[[], tuple[type[BaseException], ...]]


# -- targets -----------------------------------------------------------------


def _from_test(module: str, cases: str = "CASES", call: str = "check",
               allowed: str = "ALLOWED") -> tuple[
                   Callable[[], st.SearchStrategy[Any]], Callable[[Any], object],
                   Callable[[], tuple[type[BaseException], ...]]]:
    """A target whose strategy, property and documented errors are those of
    a unit-test module (``CASES``, ``check``, ``ALLOWED``): the long run
    and the suite test the same things.  Imported when the target runs."""
    def load() -> Any:
        return importlib.import_module(f"tests.unit.{module}")

    def run(case: Any) -> object:
        return getattr(load(), call)(case)

    return (lambda: getattr(load(), cases)), run, (lambda: tuple(getattr(load(), allowed)))


def _config_strategy() -> st.SearchStrategy[Any]:
    from tests.unit.config_fuzz_support import any_contents

    return any_contents


def _config_call(data: bytes) -> object:
    from mptcpd.config import parse_config

    return parse_config(data, "/fuzz/mptcpd.conf")


def _settings_call(data: bytes) -> object:
    from mptcpd.config import parse_settings

    return parse_settings(data)


def _config_errors() -> tuple[type[BaseException], ...]:
    from mptcpd.config import ConfigError

    return (ConfigError,)


def _settings_errors() -> tuple[type[BaseException], ...]:
    from mptcpd.config import SettingsSyntaxError

    return (SettingsSyntaxError,)


TARGETS: list[Target] = [
    # mptcp_pm events: event_codec.decode_datagram/decode_message (+ pyroute2)
    Target("events", *_from_test("test_events_fuzz")),
    # mptcp_pm command replies: every pm_codec decoder (+ pyroute2)
    Target("command-replies", *_from_test("test_commands_fuzz")),
    # the command channel answered with anything: results or KernelError
    Target("command-channel", *_from_test("test_commands_fuzz", "CHANNEL_CASES",
                                          "check_channel")),
    # rtnetlink: parse, the event stream, both dumps, the route lookup (+ pyroute2)
    Target("rtnetlink", *_from_test("test_rtnl_fuzz")),
    # sock_diag: diag.decode_datagram (+ pyroute2)
    Target("sock_diag", *_from_test("test_diag_fuzz")),
    # sock_diag's subflow listing: decode_datagram(subflows=True) (+ pyroute2)
    Target("sock_diag-subflows", *_from_test("test_diag_subflows")),
    # sock_diag's answers to one-socket lookups (connections by token,
    # subflows by path): found, answered, or OSError
    Target("sock_diag-lookups", *_from_test("test_diag_fuzz", "LOOKUP_CASES",
                                            "check_lookups", "LOOKUP_ALLOWED")),
    # nlctrl: the family watcher, decode_family_groups, lookup_family (+ pyroute2)
    Target("nlctrl", *_from_test("test_family_fuzz")),
    # the attribute walker under every strict codec
    Target("nla", *_from_test("test_nla_codec")),
    # the configuration file
    Target("config-settings", _config_strategy, _settings_call, _settings_errors),
    Target("config", _config_strategy, _config_call, _config_errors),
    # addr_adv's state file
    Target("state-file", *_from_test("test_state_fuzz")),
]


# -- runner ------------------------------------------------------------------


@dataclass
class Report:
    name: str
    cases: int = 0
    results: int = 0
    documented_errors: int = 0
    seconds: float = 0.0
    #: distinct failures hypothesis reported (each shrunk to a minimal case)
    failures: int = 0
    failure: str | None = None


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang(f"a case ran for more than {HANG_SECONDS:g} s")


def run_target(target: Target, cases: int, run_seed: int) -> Report:
    report = Report(target.name)
    allowed = target.allowed()

    def one(data: Any) -> None:
        # Every call counts, shrinking included (which only follows a failure).
        report.cases += 1
        signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
        try:
            target.call(data)
        except allowed:
            report.documented_errors += 1
        else:
            report.results += 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    test = seed(run_seed)(
        settings(
            max_examples=cases,
            database=None,
            deadline=None,
            derandomize=False,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )(given(target.strategy())(one))
    )
    previous = signal.signal(signal.SIGALRM, _alarm)
    start = time.perf_counter()
    try:
        test()
    except BaseException as exc:  # report it and go on with the other targets
        if isinstance(exc, KeyboardInterrupt):
            raise
        report.failure = "".join(traceback.format_exception(exc))
        report.failures = len(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else 1
    finally:
        report.seconds = time.perf_counter() - start
        signal.signal(signal.SIGALRM, previous)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000,
                        help="cases per parser (default 100000)")
    parser.add_argument("--seed", type=int, default=None,
                        help="hypothesis seed (default: a fresh random one, printed)")
    parser.add_argument("--target", action="append", default=None,
                        help="run only this parser (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the parsers and exit")
    args = parser.parse_args(argv)
    if args.list:
        for target in TARGETS:
            print(target.name)
        return 0
    names = {t.name for t in TARGETS}
    unknown = set(args.target or ()) - names
    if unknown:
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    run_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed {run_seed} (replay with --seed={run_seed}), {args.cases} cases per parser",
          flush=True)
    logging.disable(logging.CRITICAL)  # the parsers' warnings come by the thousand
    failed = False
    width = max(len(t.name) for t in TARGETS)
    print(f"{'parser':<{width}} {'cases':>8} {'results':>8} {'doc.err':>8} {'failures':>8} "
          f"{'s':>7}  outcome")
    for target in TARGETS:
        if args.target and target.name not in args.target:
            continue
        report = run_target(target, args.cases, run_seed)
        outcome = "ok" if report.failure is None else "FAILED"
        print(f"{report.name:<{width}} {report.cases:>8} {report.results:>8} "
              f"{report.documented_errors:>8} {report.failures:>8} {report.seconds:>7.1f}  "
              f"{outcome}", flush=True)
        if report.failure is not None:
            failed = True
            print(report.failure, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
