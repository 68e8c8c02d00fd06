"""Finding, checking and loading plugins.

Two sources, in this order, through the same checks:

1. ``*.py`` files in the plugin directory (sorted by name; symbolic links are
   skipped, as the C mptcpd skips them, and so are names starting with ``_``
   or ``.``, which are private modules).  The directory, and each file, must
   not be world-writable.
2. Modules named by entry points in the group ``mptcpd.plugins`` (how the
   bundled path managers and pip-installed plugins are found).

``load-plugins`` filters both by name: the file stem, or the entry point's
name.  A module becomes a plugin when it defines ``PLUGIN``, a
:class:`mptcpd.plugin.PluginInfo` with a name.  A module that fails to import,
lacks ``PLUGIN`` or a name, or implements an unknown hook is logged and
skipped; the first plugin of a given name wins.
"""

from __future__ import annotations

import errno
import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from mptcpd.plugin import PluginInfo
from mptcpd.plugins.registry import PluginError, PluginRegistry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mptcpd.plugins"
MODULE_PREFIX = "mptcpd_plugins"


class PluginLoadError(Exception):
    """Loading failed as a whole; the daemon cannot start."""


@dataclass(frozen=True)
class Candidate:
    """Something that may hold a plugin: a file or an entry point."""

    name: str  #: the name ``load-plugins`` matches (file stem or entry-point name)
    source: str  #: for messages: the file path, or ``entry point NAME = VALUE``
    load: Callable[[], ModuleType]


def _world_writable(mode: int) -> bool:
    return bool(mode & stat.S_IWOTH)


def check_directory(path: str) -> None:
    """Refuse a plugin directory that is missing, not a directory, or world-writable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except NotADirectoryError:
        raise PluginLoadError(f'"{path}" should be a directory that is not world writable.')
    except OSError as exc:
        raise PluginLoadError(f"Unable to open plugin directory: {os.strerror(exc.errno or 0)}")
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISDIR(st.st_mode) or _world_writable(st.st_mode):
        raise PluginLoadError(f'"{path}" should be a directory that is not world writable.')


def _import_file(path: Path) -> ModuleType:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode) or _world_writable(st.st_mode):
        raise PluginError(f'"{path}" should be a file that is not world writable.')
    name = f"{MODULE_PREFIX}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_entry_point(ep: importlib.metadata.EntryPoint) -> ModuleType:
    # Check the module's file before anything of it runs (find_spec may
    # import the parent packages of a dotted name, not the module itself).
    spec = importlib.util.find_spec(ep.module)
    if spec is None:
        raise PluginError(f"entry point {ep.name} = {ep.value}: no module {ep.module}")
    if spec.origin and os.path.exists(spec.origin):
        if _world_writable(os.stat(spec.origin).st_mode):
            raise PluginError(f'"{spec.origin}" should be a file that is not world writable.')
    module = importlib.import_module(ep.module)
    if ep.attr:
        module = getattr(module, ep.attr)
    if not isinstance(module, ModuleType):
        raise PluginError(f"entry point {ep.name} = {ep.value}: names no module")
    return module


def directory_candidates(directory: str, names: Iterable[str] | None) -> Iterator[Candidate]:
    base = Path(directory)
    if names is not None:
        for name in names:
            path = base / f"{name}.py"
            if path.exists():
                yield Candidate(name, str(path), functools.partial(_import_file, path))
        return
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError as exc:
        raise PluginLoadError(f"Error during plugin directory read: {os.strerror(exc.errno or 0)}")
    for entry in entries:
        if not entry.name.endswith(".py") or entry.name.startswith((".", "_")):
            continue
        if entry.is_symlink():
            log.debug("Skipping symbolic link %s", entry.path)
            continue
        if not entry.is_file():
            continue
        path = Path(entry.path)
        yield Candidate(path.stem, str(path), functools.partial(_import_file, path))


def entry_point_candidates(names: Iterable[str] | None) -> Iterator[Candidate]:
    wanted = None if names is None else set(names)
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    for ep in eps:
        if wanted is not None and ep.name not in wanted:
            continue
        yield Candidate(ep.name, f"entry point {ep.name} = {ep.value}",
                        functools.partial(_import_entry_point, ep))


def plugin_info(module: ModuleType, source: str) -> PluginInfo:
    info = getattr(module, "PLUGIN", None)
    if info is None:
        raise PluginError(f"{source}: undefined symbol: PLUGIN")
    if not isinstance(info, PluginInfo):
        raise PluginError(f"{source}: PLUGIN is not an mptcpd.plugin.PluginInfo")
    if not info.name:
        raise PluginError(f"No plugin name specified in {source}")
    return info


def load_into(registry: PluginRegistry, candidates: Iterable[Candidate]) -> None:
    """Import every candidate and register its plugin; log and skip bad ones."""
    for cand in candidates:
        try:
            module = cand.load()
        except PluginError as exc:
            log.error("%s", exc)
            continue
        except (Exception, SystemExit) as exc:
            log.error("%s: %s: %s", cand.source, type(exc).__name__, exc)
            log.debug("Traceback of the failed import of %s", cand.source, exc_info=True)
            continue
        try:
            info = plugin_info(module, cand.source)
        except PluginError as exc:
            log.error("%s", exc)
            continue
        try:
            registry.register(module, info, cand.source)
        except PluginError as exc:
            log.error("%s", exc)
            continue
        log.debug('Loaded plugin "%s" (priority %d) from %s', info.name, info.priority,
                  cand.source)


def load_plugins(
    registry: PluginRegistry,
    plugin_dir: str | None,
    names: Iterable[str] | None = None,
    entry_points: bool = True,
) -> None:
    """Load the plugins of ``plugin_dir`` and of the entry points into ``registry``.

    ``names`` (``load-plugins``) restricts loading to those names, in that
    order for the directory.  Raises :class:`PluginLoadError` when the directory is unsafe or nothing
    at all was loaded.
    """
    names = list(names) if names is not None else None
    candidates: list[Candidate] = []
    if plugin_dir is not None:
        check_directory(plugin_dir)
        candidates.extend(directory_candidates(plugin_dir, names))
    if entry_points:
        candidates.extend(entry_point_candidates(names))
    if names is not None:
        found = {c.name for c in candidates}
        for name in names:
            if name not in found:
                where = f"{plugin_dir}/{name}.py" if plugin_dir else name
                log.error("%s: %s", where, os.strerror(errno.ENOENT))
    load_into(registry, candidates)
    if not len(registry):
        raise PluginLoadError("No path manager plugin was loaded.")
