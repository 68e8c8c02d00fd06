"""mptcpd-install: put an installed mptcpd's system files in place.

``mptcpd-install`` writes the systemd unit (``mptcp.service``, its
``ExecStart`` pointing at this installation's ``mptcpd``), the configuration
file (``/etc/mptcpd/mptcpd.conf``: never over one that was edited) and the
man pages, and checks that the service's dynamic user can read what it runs
and loads; ``--uninstall`` removes what it installed (not an edited
configuration file).  ``--root DIR`` installs below ``DIR`` instead of
``/``, for packaging and for tests.  Afterwards, ``systemctl enable --now
mptcp`` is all there is to do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import mptcpd
from mptcpd.config import DEFAULT_PLUGIN_DIR

UNIT = "etc/systemd/system/mptcp.service"
CONFIG = "etc/mptcpd/mptcpd.conf"
MAN_DIR = "usr/local/share/man/man8"
MAN_PAGES = ("mptcpd.8", "mptcpize.8", "mptcp-get-debug.8", "mptcpctl.8")
SHIPPED_COMMAND = "/usr/bin/mptcpd"


def system_files() -> Path:
    """Where the package keeps its system files: ``mptcpd/_system`` when
    installed, the checkout's ``etc/`` and ``man/`` in an editable install."""
    package = Path(mptcpd.__file__).resolve().parent
    installed = package / "_system"
    if installed.is_dir():
        return installed
    return package.parents[1]


def source(name: str) -> Path:
    root = system_files()
    if root.name == "_system":
        return root / Path(name).name
    return root / ("man" if name.endswith(".8") else "etc") / Path(name).name


def mptcpd_command() -> Path:
    """This installation's ``mptcpd`` command."""
    beside = Path(sys.executable).with_name("mptcpd")
    if beside.exists():
        return beside
    found = shutil.which("mptcpd")
    if found is None:
        raise SystemExit("mptcpd-install: the mptcpd command of this installation was not "
                         "found (next to the Python running this, nor on PATH)")
    return Path(found)


def unit_text(command: Path) -> str:
    lines = source("mptcp.service").read_text().splitlines(keepends=True)
    start = f"ExecStart={SHIPPED_COMMAND} "
    found = [i for i, line in enumerate(lines) if line.startswith(start)]
    if len(found) != 1:
        raise SystemExit(f"mptcpd-install: {source('mptcp.service')} has no ExecStart "
                         f"{SHIPPED_COMMAND} to replace")
    lines[found[0]] = lines[found[0]].replace(SHIPPED_COMMAND, str(command), 1)
    return "".join(lines)


def unreadable(path: Path) -> str | None:
    """Why a service user that is nobody in particular cannot use ``path``
    (None when it can): every directory above must be searchable by others,
    and the file readable; the unit's ProtectHome= hides /root and /home."""
    path = path.absolute()
    if path.parts[1:2] in (("root",), ("home",)):
        return (f"{path} is under /{path.parts[1]}, which the service's sandbox "
                "(ProtectHome=yes) hides")
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            return f"{parent} is not searchable by other users (mode {stat.filemode(mode)})"
    mode = path.stat().st_mode
    if not mode & stat.S_IROTH:
        return f"{path} is not readable by other users (mode {stat.filemode(mode)})"
    return None


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def install(root: Path, out: list[str]) -> list[str]:
    """Install below ``root``; returns the warnings (what the service would
    not be able to read)."""
    command = mptcpd_command()
    unit = root / UNIT
    _write(unit, unit_text(command), 0o644)
    out.append(f"installed {unit}")
    config = root / CONFIG
    shipped = source("mptcpd.conf").read_text()
    if not config.exists():
        _write(config, shipped, 0o644)
        config.parent.chmod(0o755)
        out.append(f"installed {config}")
    elif config.read_text() != shipped:
        out.append(f"kept {config} (edited); the shipped one is {source('mptcpd.conf')}")
    for page in MAN_PAGES:
        target = root / MAN_DIR / page
        _write(target, source(page).read_text(), 0o644)
        out.append(f"installed {target}")
    warnings = []
    needed = [command, Path(sys.executable).resolve(),
              Path(mptcpd.__file__).resolve().parent, Path(DEFAULT_PLUGIN_DIR)]
    for path in needed:
        reason = unreadable(path)
        if reason is not None:
            warnings.append(f"warning: the service cannot use this installation: {reason}; "
                            "install mptcpd where every user can read it, for example "
                            "in a virtual environment under /opt")
            break
    return warnings


def uninstall(root: Path, out: list[str]) -> None:
    for path in (root / UNIT, *(root / MAN_DIR / page for page in MAN_PAGES)):
        if path.exists():
            path.unlink()
            out.append(f"removed {path}")
    config = root / CONFIG
    if config.exists():
        if config.read_text() == source("mptcpd.conf").read_text():
            config.unlink()
            out.append(f"removed {config}")
            try:
                config.parent.rmdir()
            except OSError:
                pass
        else:
            out.append(f"kept {config} (edited)")


def main(argv: Sequence[str] | None = None) -> None:
    """The ``mptcpd-install`` command."""
    parser = argparse.ArgumentParser(
        prog="mptcpd-install",
        description="Install (or remove) the systemd unit, the configuration file and "
                    "the man pages of this mptcpd installation.")
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="install below this directory instead of / (default: /)")
    parser.add_argument("--uninstall", action="store_true",
                        help="remove what was installed (an edited configuration file "
                             "stays)")
    args = parser.parse_args(argv)
    out: list[str] = []
    try:
        if args.uninstall:
            uninstall(args.root, out)
            warnings: list[str] = []
        else:
            warnings = install(args.root, out)
    except OSError as exc:
        print("\n".join(out), file=sys.stdout)
        raise SystemExit(f"mptcpd-install: {exc}") from None
    for line in out:
        print(line)
    for line in warnings:
        print(line, file=sys.stderr)
    if not args.uninstall and args.root == Path("/"):
        print("now: systemctl daemon-reload && systemctl enable --now mptcp")
    raise SystemExit(1 if warnings else 0)
