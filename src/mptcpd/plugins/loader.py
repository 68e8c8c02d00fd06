"""Finding, checking and loading plugins.

Two sources, in this order, through the same checks:

1. ``*.py`` files in the plugin directory (sorted by name; symbolic links are
   skipped, as the C mptcpd skips them, and so are names starting with ``_``
   or ``.``, which are private modules).
2. Modules named by entry points in the group ``mptcpd.plugins`` (how
   pip-installed plugins are found).  When the plugin directory is not the
   default one, only the entry points named in ``load-plugins`` load.

The plugin directory, each plugin file and the directory holding an
entry point's module must be owned by root or by the daemon's user and be
neither group- nor world-writable.  A directory plugin is opened once,
without following links, checked on its descriptor and compiled from the
bytes read: no ``__pycache__`` is read or written for it.

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
import importlib.machinery
import importlib.util
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from mptcpd import config
from mptcpd.plugin import PluginInfo
from mptcpd.plugins.registry import PluginError, PluginRegistry

if TYPE_CHECKING:
    import importlib.metadata

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mptcpd.plugins"
MODULE_PREFIX = "mptcpd_plugins"


class PluginLoadError(Exception):
    """Loading failed as a whole; the daemon cannot start."""


@dataclass(frozen=True)
class Candidate:
    """Something that may hold a plugin: a file or an entry point."""

    name: str  #: the name ``load-plugins`` matches (file stem or entry point name)
    source: str  #: for messages: the file path, or ``entry point NAME = VALUE``
    load: Callable[[], ModuleType]


def _world_writable(mode: int) -> bool:
    return bool(mode & stat.S_IWOTH)


def _trusted_uids() -> tuple[int, ...]:
    return (0, os.geteuid())


def unsafe_reason(st: os.stat_result, path: str, kind: str) -> str | None:
    """Why a plugin file or directory with status *st* must not be trusted, or None.

    *kind* is ``"file"`` or ``"directory"``.  The world-writable message is
    the C daemon's; ownership and the group-write bit are checked too.
    """
    wanted = stat.S_ISDIR if kind == "directory" else stat.S_ISREG
    if not wanted(st.st_mode) or _world_writable(st.st_mode):
        return f'"{path}" should be a {kind} that is not world writable.'
    if st.st_mode & stat.S_IWGRP:
        return f'"{path}" should be a {kind} that is not group writable.'
    if st.st_uid not in _trusted_uids():
        return (f'"{path}" should be owned by root or by the daemon\'s user '
                f"(uid {os.geteuid()}), not by uid {st.st_uid}.")
    return None


def open_directory(path: str) -> int:
    """Open and check the plugin directory; return its descriptor (close it).

    The directory itself may be reached through a symbolic link, as in C.
    Raises :class:`PluginLoadError` when it is missing, not a directory,
    writable by others, or owned by someone else.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise PluginLoadError(f'"{path}" should be a directory that is not world writable.')
    except OSError as exc:
        raise PluginLoadError(f"Unable to open plugin directory: {os.strerror(exc.errno or 0)}")
    try:
        reason = unsafe_reason(os.fstat(fd), path, "directory")
    except BaseException:
        os.close(fd)
        raise
    if reason is not None:
        os.close(fd)
        raise PluginLoadError(reason)
    return fd


def _read_plugin(dir_fd: int, directory: str, filename: str) -> tuple[str, bytes]:
    """Open *filename* in the directory without following links, check the
    descriptor and return (path for messages, contents)."""
    path = os.path.join(directory, filename)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(filename, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PluginError(f'"{path}" is a symbolic link: plugins are not loaded '
                              "through links.") from None
        raise PluginError(f"{path}: {os.strerror(exc.errno or 0)}") from None
    with os.fdopen(fd, "rb") as file:
        reason = unsafe_reason(os.fstat(file.fileno()), path, "file")
        if reason is not None:
            raise PluginError(reason)
        return path, file.read()


def _import_file(dir_fd: int, directory: str, filename: str) -> ModuleType:
    path, source = _read_plugin(dir_fd, directory, filename)
    # Compiled from the bytes just checked: the import system would look in
    # __pycache__ for a cached version, which nothing here has checked.
    code = compile(source, path, "exec", dont_inherit=True)
    name = f"{MODULE_PREFIX}.{Path(filename).stem}"
    module = ModuleType(name)
    module.__file__ = path
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=path)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _check_module_file(origin: str) -> None:
    """The checks of a directory plugin, for an entry point's module file, its
    directory and, when present, its cached bytecode in ``__pycache__``."""
    directory = os.path.dirname(origin)
    paths = [(directory, "directory"), (origin, "file")]
    if origin.endswith(".py"):
        cached = importlib.util.cache_from_source(origin)
        paths += [(os.path.dirname(cached), "directory"), (cached, "file")]
    for path, kind in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if kind == "file" and path == origin:
                raise PluginError(f"{origin}: {os.strerror(errno.ENOENT)}") from None
            continue
        if stat.S_ISLNK(st.st_mode) and path != directory:
            # A linked module file is trusted no more than a linked plugin
            # file; the directory may be reached through links, as in C.
            raise PluginError(f'"{path}" is a symbolic link: plugins are not loaded '
                              "through links.")
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(path)
        reason = unsafe_reason(st, path, kind)
        if reason is not None:
            raise PluginError(reason)


def _import_entry_point(ep: importlib.metadata.EntryPoint) -> ModuleType:
    # Check the module's file before anything of it runs (find_spec may
    # import the parent packages of a dotted name, not the module itself).
    spec = importlib.util.find_spec(ep.module)
    if spec is None:
        raise PluginError(f"entry point {ep.name} = {ep.value}: no module {ep.module}")
    if spec.origin and spec.has_location:
        _check_module_file(spec.origin)
    module = importlib.import_module(ep.module)
    if ep.attr:
        module = getattr(module, ep.attr)
    if not isinstance(module, ModuleType):
        raise PluginError(f"entry point {ep.name} = {ep.value}: names no module")
    return module


def directory_candidates(
    dir_fd: int, directory: str, names: Iterable[str] | None
) -> Iterator[Candidate]:
    """The plugin files of the open directory *dir_fd* (named *directory* in
    messages): the files named in *names*, or every ``*.py`` file."""
    if names is not None:
        for name in names:
            filename = f"{name}.py"
            try:
                os.stat(filename, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield Candidate(name, os.path.join(directory, filename),
                            functools.partial(_import_file, dir_fd, directory, filename))
        return
    try:
        entries = sorted(os.scandir(dir_fd), key=lambda e: e.name)
    except OSError as exc:
        raise PluginLoadError(f"Error during plugin directory read: {os.strerror(exc.errno or 0)}")
    for entry in entries:
        if not entry.name.endswith(".py") or entry.name.startswith((".", "_")):
            continue
        path = os.path.join(directory, entry.name)
        if entry.is_symlink():
            log.debug("Skipping symbolic link %s", path)
            continue
        if not entry.is_file(follow_symlinks=False):
            continue
        yield Candidate(entry.name[:-3], path,
                        functools.partial(_import_file, dir_fd, directory, entry.name))


def _metadata_dirs(entry: str) -> Iterator[str] | None:
    """The metadata directories in ``sys.path`` entry ``entry`` where
    :mod:`importlib.metadata` looks for entry points (``*.dist-info``,
    ``*.egg-info``, an egg's ``EGG-INFO``); None when ``entry`` is a file
    (a zip, whose contents are not looked at here)."""
    base = entry or "."
    try:
        children = os.listdir(base)
    except NotADirectoryError:
        return None
    except OSError:  # missing or unreadable: importlib.metadata skips it too
        return iter(())
    egg = base.lower().endswith(".egg")
    return (os.path.join(base, child) for child in children
            if child.lower().endswith((".dist-info", ".egg-info"))
            or (egg and child.lower() == "egg-info"))


def may_declare_entry_points(group: str = ENTRY_POINT_GROUP) -> bool:
    """Whether a distribution on ``sys.path`` may declare entry points of
    ``group``: whether an ``entry_points.txt`` of one mentions it at all.

    The daemon asks this before it loads :mod:`importlib.metadata` (most
    of a start's 10-15 ms of loading the plugins, its email and zip
    modules): without such a distribution, nothing of it is needed.  What
    this look cannot rule out (a file such as a zip on the path, a
    distribution finder other than the standard one) counts as "may"."""
    for finder in sys.meta_path:
        if (finder is not importlib.machinery.PathFinder
                and getattr(finder, "find_distributions", None) is not None):
            return True
    needle = group.encode()
    for entry in sys.path:
        directories = _metadata_dirs(entry)
        if directories is None:
            return True
        for directory in directories:
            try:
                with open(os.path.join(directory, "entry_points.txt"), "rb") as file:
                    if needle in file.read():
                        return True
            except OSError:
                continue
    return False


def entry_point_candidates(names: Iterable[str] | None) -> Iterator[Candidate]:
    if not may_declare_entry_points(ENTRY_POINT_GROUP):
        return
    import importlib.metadata  # only now: see may_declare_entry_points

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


def _is_default_dir(plugin_dir: str) -> bool:
    return os.path.realpath(plugin_dir) == os.path.realpath(config.DEFAULT_PLUGIN_DIR)


def load_plugins(
    registry: PluginRegistry,
    plugin_dir: str | None,
    names: Iterable[str] | None = None,
    entry_points: bool | None = None,
) -> None:
    """Load the plugins of ``plugin_dir`` and of the entry points into ``registry``.

    ``names`` (``load-plugins``) restricts loading to those names, in that
    order for the directory.  ``entry_points``: True loads every entry point
    (or those in ``names``), False none; None (the daemon's choice) loads
    them all only when ``plugin_dir`` is None or the default directory, and
    otherwise only those named in ``names``, so that a plugin directory given
    explicitly is not outranked by an installed package.  Raises
    :class:`PluginLoadError` when the directory is unsafe or nothing at all
    was loaded.
    """
    names = list(names) if names is not None else None
    if entry_points is None:
        entry_points = plugin_dir is None or _is_default_dir(plugin_dir) or names is not None
        if not entry_points:
            for ep in entry_point_candidates(None):
                log.warning('Entry point plugin "%s" (%s) not loaded: the plugin directory '
                            "%s was set explicitly; name it in load-plugins to load it.",
                            ep.name, ep.source.removeprefix("entry point "), plugin_dir)
    candidates: list[Candidate] = []
    dir_fd = open_directory(plugin_dir) if plugin_dir is not None else None
    try:
        if dir_fd is not None:
            assert plugin_dir is not None
            candidates.extend(directory_candidates(dir_fd, plugin_dir, names))
        if entry_points:
            candidates.extend(entry_point_candidates(names))
        if names is not None:
            found = {c.name for c in candidates}
            for name in names:
                if name not in found:
                    where = f"{plugin_dir}/{name}.py" if plugin_dir else name
                    log.error("%s: %s", where, os.strerror(errno.ENOENT))
        load_into(registry, candidates)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    if not len(registry):
        raise PluginLoadError("No path manager plugin was loaded.")
