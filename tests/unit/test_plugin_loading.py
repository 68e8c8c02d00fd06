"""Plugin loading, ported from the C test-plugin scenarios."""

from __future__ import annotations

import logging
import os
import py_compile
import shutil
import sys
from pathlib import Path

import pytest

from mptcpd.plugins.loader import PluginLoadError, load_plugins
from mptcpd.plugins.registry import PluginRegistry

FIXTURES = Path(__file__).resolve().parents[1] / "plugins"
NOBODY = 65534

#: Plugin source that leaves a marker file when it runs (the marker's path
#: is substituted for MARKER).
EVIL = (
    "open(MARKER, 'w').close()\n"
    "from mptcpd.plugin import PluginInfo\n"
    "PLUGIN = PluginInfo(name='evil')\n"
)


def fixture_dir(tmp_path: Path, *names: str, mode: int = 0o755) -> Path:
    """A private copy of fixture plugin directories (so modes can change)."""
    target = tmp_path / "plugins"
    target.mkdir()
    for name in names:
        for src in sorted((FIXTURES / name).glob("*.py")):
            dst = target / src.name
            shutil.copyfile(src, dst)
            dst.chmod(0o644)
    target.chmod(mode)
    return target


def load(directory: Path | str, names: list[str] | None = None) -> PluginRegistry:
    registry = PluginRegistry()
    load_plugins(registry, str(directory), names, entry_points=False)
    return registry


def test_fix_a_group_writable_directory_is_refused(tmp_path: Path) -> None:
    directory = fixture_dir(tmp_path, "noop", mode=0o770)
    with pytest.raises(PluginLoadError) as exc:
        load(directory)
    assert str(exc.value) == f'"{directory}" should be a directory that is not group writable.'


def test_fix_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    directory = fixture_dir(tmp_path, "noop")
    os.chown(directory, NOBODY, NOBODY)
    with pytest.raises(PluginLoadError) as exc:
        load(directory)
    assert str(exc.value) == (
        f'"{directory}" should be owned by root or by the daemon\'s user '
        f"(uid {os.geteuid()}), not by uid {NOBODY}."
    )


def test_a_directory_reached_through_a_link_is_followed(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(fixture_dir(tmp_path, "noop"))
    assert [p.name for p in load(tmp_path / "link").plugins] == ["noop"]


def test_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    directory = fixture_dir(tmp_path, "noop", mode=0o777)
    with pytest.raises(PluginLoadError) as exc:
        load(directory)
    assert str(exc.value) == f'"{directory}" should be a directory that is not world writable.'


def test_a_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(PluginLoadError) as exc:
        load(path)
    assert str(exc.value) == f'"{path}" should be a directory that is not world writable.'


def test_a_missing_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError) as exc:
        load(tmp_path / "missing")
    assert str(exc.value) == "Unable to open plugin directory: No such file or directory"


def test_an_empty_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError, match=r"^No path manager plugin was loaded\.$"):
        load(fixture_dir(tmp_path))


def test_load_plugins_names_files_not_plugins(tmp_path: Path) -> None:
    registry = load(fixture_dir(tmp_path, "security"), ["four"])
    assert [p.name for p in registry.plugins] == ["plugin_four"]


def test_a_missing_named_plugin_is_logged_and_loading_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = fixture_dir(tmp_path, "security")
    with pytest.raises(PluginLoadError):
        load(directory, ["nonexistent"])
    assert f"{directory}/nonexistent.py: No such file or directory" in caplog.text


def test_plugins_are_sorted_by_priority_then_name(tmp_path: Path) -> None:
    registry = load(fixture_dir(tmp_path, "priority", "security", "noop"))
    assert [(p.name, p.info.priority) for p in registry.plugins] == [
        ("plugin_one", -20), ("noop", 0), ("plugin_three", 0),
        ("plugin_four", 19), ("plugin_two", 19),
    ]


def test_bad_plugins_are_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = fixture_dir(tmp_path, "bad", "noop")
    registry = load(directory)
    # failed_init has a valid descriptor: it loads (its init fails later).
    assert [p.name for p in registry.plugins] == ["noop", "plugin_failed_init"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    expected = {
        "coroutine": "is a coroutine function",
        "import_error": "ModuleNotFoundError: No module named 'mptcpd_no_such_module'",
        "misspelled": "'new_conection' is not an mptcpd hook",
        "no_name": "No plugin name specified in",
        "no_symbol": "undefined symbol: PLUGIN",
        "syntax_error": "SyntaxError",
        "wrong_args": "can not be found in the hookspec",
    }
    for stem, text in expected.items():
        assert any(f"{directory}/{stem}.py" in e and text in e for e in errors), (stem, errors)
    assert len(errors) == len(expected)


def test_a_world_writable_plugin_file_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = fixture_dir(tmp_path, "security")
    (directory / "three.py").chmod(0o666)
    registry = load(directory)
    assert [p.name for p in registry.plugins] == ["plugin_four"]
    assert f'"{directory}/three.py" should be a file that is not world writable.' in caplog.text


def test_symbolic_links_are_skipped(tmp_path: Path) -> None:
    directory = fixture_dir(tmp_path, "noop")
    (directory / "linked.py").symlink_to(FIXTURES / "security" / "three.py")
    assert [p.name for p in load(directory).plugins] == ["noop"]


def test_fix_symbolic_links_named_in_load_plugins_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = fixture_dir(tmp_path, "noop")
    (directory / "linked.py").symlink_to(FIXTURES / "security" / "three.py")
    assert [p.name for p in load(directory, ["linked", "noop"]).plugins] == ["noop"]
    assert (f'"{directory}/linked.py" is a symbolic link: plugins are not loaded '
            "through links.") in caplog.text


@pytest.mark.parametrize(
    ("uid", "mode", "why"),
    [
        pytest.param(NOBODY, 0o664, "group writable", id="nobody-group-writable"),
        pytest.param(0, 0o664, "group writable", id="root-group-writable"),
        pytest.param(NOBODY, 0o644, "owner", id="nobody"),
    ],
)
@pytest.mark.parametrize("named", [False, True], ids=["all", "load-plugins"])
def test_fix_unsafe_plugin_files_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, uid: int, mode: int, why: str,
    named: bool,
) -> None:
    directory = fixture_dir(tmp_path, "noop")
    marker = tmp_path / "ran"
    evil = directory / "evil.py"
    evil.write_text(EVIL.replace("MARKER", repr(str(marker))))
    os.chown(evil, uid, uid)
    evil.chmod(mode)
    registry = load(directory, ["evil", "noop"] if named else None)
    assert [p.name for p in registry.plugins] == ["noop"]
    assert not marker.exists()
    if why == "owner":
        expected = (f'"{evil}" should be owned by root or by the daemon\'s user '
                    f"(uid {os.geteuid()}), not by uid {NOBODY}.")
    else:
        expected = f'"{evil}" should be a file that is not group writable.'
    assert expected in [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


def test_fix_own_files_of_the_daemon_user_load(tmp_path: Path) -> None:
    directory = fixture_dir(tmp_path, "noop")
    os.chown(directory / "noop.py", os.geteuid(), NOBODY)  # the group does not matter
    assert [p.name for p in load(directory).plugins] == ["noop"]


def test_fix_a_planted_pycache_is_not_run(tmp_path: Path) -> None:
    """A .pyc in __pycache__ (writable by someone else, or just planted) is
    never read: the plugin runs the source that was checked."""
    directory = fixture_dir(tmp_path, "noop")
    marker = tmp_path / "ran"
    evil_src = tmp_path / "evil_src.py"
    evil_src.write_text(EVIL.replace("MARKER", repr(str(marker))))
    cache = directory / "__pycache__"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    # An unchecked-hash .pyc is used without looking at the source at all.
    py_compile.compile(
        str(evil_src),
        cfile=str(cache / f"noop.{sys.implementation.cache_tag}.pyc"),
        dfile=str(directory / "noop.py"),
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    registry = load(directory)
    assert [p.name for p in registry.plugins] == ["noop"]
    assert not marker.exists()
    assert sorted(p.name for p in cache.iterdir()) == [
        f"noop.{sys.implementation.cache_tag}.pyc"
    ]


def test_fix_no_bytecode_is_written_for_plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    directory = fixture_dir(tmp_path, "noop")
    assert [p.name for p in load(directory).plugins] == ["noop"]
    assert sorted(p.name for p in directory.iterdir()) == ["noop.py"]


def test_fix_the_file_checked_is_the_file_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file swapped in right after the check is not the one that runs: the
    checks are made on the open descriptor, which is then read."""
    directory = fixture_dir(tmp_path, "noop")
    plugin = directory / "noop.py"
    marker = tmp_path / "ran"
    evil = directory / ".evil"
    evil.write_text(EVIL.replace("MARKER", repr(str(marker))))
    evil.chmod(0o644)
    real_stat, real_fstat = os.stat, os.fstat
    swapped = []

    def swap() -> None:
        if not swapped:
            swapped.append(True)
            os.replace(evil, plugin)

    def stat_then_swap(path: object, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if str(path) == str(plugin):
            swap()
        return result

    def fstat_then_swap(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target == str(plugin):
            swap()
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    monkeypatch.setattr(os, "fstat", fstat_then_swap)
    registry = load(directory)
    monkeypatch.undo()
    assert swapped
    assert [p.name for p in registry.plugins] == ["noop"]
    assert not marker.exists()


def test_the_first_plugin_of_a_name_wins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = fixture_dir(tmp_path, "noop")
    shutil.copyfile(directory / "noop.py", directory / "zz_copy.py")
    registry = load(directory)
    assert [p.source for p in registry.plugins] == [str(directory / "noop.py")]
    assert f'Plugin "noop" from {directory}/zz_copy.py ignored' in caplog.text


def test_init_runs_in_priority_order_and_exit_in_reverse(tmp_path: Path) -> None:
    from tests.plugins import recording

    recording.CALLS.clear()
    registry = load(fixture_dir(tmp_path, "priority", "security"))
    registry.init_all(pm=None)
    registry.exit_all(pm=None)
    order = [(name, hook) for name, hook, _ in recording.CALLS]
    names = ["plugin_one", "plugin_three", "plugin_four", "plugin_two"]
    assert order == [(n, "plugin_init") for n in names] + [
        (n, "plugin_exit") for n in reversed(names)
    ]


def test_a_failing_init_warns_and_the_plugin_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = fixture_dir(tmp_path, "bad")
    registry = load(directory, ["failed_init"])
    registry.init_all(pm=None)
    assert 'Plugin "plugin_failed_init" failed to initialize' in caplog.text
    assert "plugin_failed_init" in registry


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A plugin package 'installed' with an entry point in mptcpd.plugins."""
    import importlib
    import sys

    site = tmp_path / "site"
    site.mkdir()
    module = site / "mptcpd_ep_demo.py"
    module.write_text(
        f"open({str(tmp_path / 'imported')!r}, 'a').close()\n"
        "from mptcpd.plugin import PluginInfo, hookimpl\n"
        "PLUGIN = PluginInfo(name='ep_demo', priority=-5)\n"
        "@hookimpl\n"
        "def new_connection(token):\n"
        "    pass\n"
    )
    module.chmod(0o644)
    dist = site / "mptcpd_ep_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mptcpd-ep-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mptcpd.plugins]\nep_demo = mptcpd_ep_demo\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield module
    sys.modules.pop("mptcpd_ep_demo", None)


@pytest.fixture
def default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the noop fixture made the default plugin directory."""
    from mptcpd import config

    directory = fixture_dir(tmp_path, "noop")
    monkeypatch.setattr(config, "DEFAULT_PLUGIN_DIR", str(directory))
    return directory


def test_entry_point_plugins_load_after_the_default_directory(
    tmp_path: Path, installed_plugin: Path, default_dir: Path
) -> None:
    registry = PluginRegistry()
    load_plugins(registry, str(default_dir), None)
    assert [(p.name, p.source) for p in registry.plugins] == [
        ("ep_demo", "entry point ep_demo = mptcpd_ep_demo"),
        ("noop", str(tmp_path / "plugins" / "noop.py")),
    ]
    assert set(registry.get("ep_demo").impls) == {"new_connection"}  # type: ignore[union-attr]


def test_fix_with_an_explicit_plugin_dir_entry_points_load_only_when_named(
    tmp_path: Path, installed_plugin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = fixture_dir(tmp_path, "noop")
    registry = PluginRegistry()
    load_plugins(registry, str(directory), None)
    # ep_demo (priority -5) would otherwise come first and be the default.
    assert [p.name for p in registry.plugins] == ["noop"]
    assert not (tmp_path / "imported").exists()
    assert (
        'Entry point plugin "ep_demo" (ep_demo = mptcpd_ep_demo) not loaded: the plugin '
        f"directory {directory} was set explicitly; name it in load-plugins to load it."
    ) in [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    registry = PluginRegistry()
    load_plugins(registry, str(directory), ["noop", "ep_demo"])
    assert [p.name for p in registry.plugins] == ["ep_demo", "noop"]


def test_load_plugins_filters_entry_points_by_name(
    tmp_path: Path, installed_plugin: Path
) -> None:
    directory = fixture_dir(tmp_path, "noop")
    registry = PluginRegistry()
    load_plugins(registry, str(directory), ["ep_demo"])
    assert [p.name for p in registry.plugins] == ["ep_demo"]
    registry = PluginRegistry()
    load_plugins(registry, str(directory), ["noop"])
    assert [p.name for p in registry.plugins] == ["noop"]


def _only_path(monkeypatch: pytest.MonkeyPatch, *entries: Path) -> None:
    """Distributions are looked for in ``entries`` only, by the standard finder."""
    import importlib.machinery

    monkeypatch.setattr(sys, "path", [str(e) for e in entries])
    monkeypatch.setattr(sys, "meta_path", [importlib.machinery.PathFinder])


def _dist(site: Path, name: str, entry_points: str | None) -> None:
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    if entry_points is not None:
        (dist / "entry_points.txt").write_text(entry_points)


def test_entry_points_are_looked_up_only_when_a_distribution_may_declare_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """importlib.metadata (and its email and zip modules) is for a daemon
    that has entry-point plugins: without a distribution whose
    entry_points.txt names the group, it is not asked."""
    import importlib.metadata

    from mptcpd.plugins import loader

    site, other = tmp_path / "site", tmp_path / "other"
    _dist(site, "tool", "[console_scripts]\ntool = tool:main\n")
    _dist(site, "bare", None)
    (site / "legacy.egg-info").write_text("Metadata-Version: 1.0\n")  # a PKG-INFO file
    directory = fixture_dir(tmp_path, "noop")

    def refuse(**kwargs: object) -> object:
        raise AssertionError("importlib.metadata.entry_points was called")

    monkeypatch.setattr(importlib.metadata, "entry_points", refuse)
    _only_path(monkeypatch, site, tmp_path / "missing")
    assert loader.may_declare_entry_points() is False
    registry = PluginRegistry()
    load_plugins(registry, str(directory), ["noop"])  # entry points named: looked for
    assert [p.name for p in registry.plugins] == ["noop"]
    # What may declare them: such a file, a zip on the path, another finder.
    _dist(other, "plugin", "[mptcpd.plugins]\nmine = mine\n")
    _only_path(monkeypatch, site, other)
    assert loader.may_declare_entry_points() is True
    (tmp_path / "lib.zip").write_bytes(b"")
    _only_path(monkeypatch, site, tmp_path / "lib.zip")
    assert loader.may_declare_entry_points() is True

    class Finder:
        @staticmethod
        def find_distributions(*args: object) -> list[object]:
            return []

    _only_path(monkeypatch, site)
    monkeypatch.setattr(sys, "meta_path", [Finder, *sys.meta_path])
    assert loader.may_declare_entry_points() is True


def test_a_world_writable_entry_point_module_is_refused(
    tmp_path: Path, installed_plugin: Path, default_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    installed_plugin.chmod(0o666)
    registry = PluginRegistry()
    load_plugins(registry, str(default_dir), None)
    assert [p.name for p in registry.plugins] == ["noop"]
    assert f'"{installed_plugin}" should be a file that is not world writable.' in caplog.text
    assert not (tmp_path / "imported").exists()  # refused before any of it ran


def _plant_cache(module: Path, mode: int) -> Path:
    cache = module.parent / "__pycache__"
    cache.mkdir(exist_ok=True)
    pyc = cache / f"{module.stem}.{sys.implementation.cache_tag}.pyc"
    py_compile.compile(str(module), cfile=str(pyc))
    pyc.chmod(mode)
    return pyc


@pytest.mark.parametrize(
    "what",
    ["module-owner", "module-group-writable", "directory-owner", "directory-group-writable",
     "pycache-writable", "pycache-dir-owner", "module-link"],
)
def test_fix_unsafe_entry_point_modules_are_refused(
    tmp_path: Path, installed_plugin: Path, default_dir: Path,
    caplog: pytest.LogCaptureFixture, what: str,
) -> None:
    site = installed_plugin.parent
    uid = os.geteuid()
    if what == "module-owner":
        os.chown(installed_plugin, NOBODY, NOBODY)
        expected = (f'"{installed_plugin}" should be owned by root or by the daemon\'s '
                    f"user (uid {uid}), not by uid {NOBODY}.")
    elif what == "module-group-writable":
        installed_plugin.chmod(0o664)
        expected = f'"{installed_plugin}" should be a file that is not group writable.'
    elif what == "directory-owner":
        os.chown(site, NOBODY, NOBODY)
        expected = (f'"{site}" should be owned by root or by the daemon\'s '
                    f"user (uid {uid}), not by uid {NOBODY}.")
    elif what == "directory-group-writable":
        site.chmod(0o775)
        expected = f'"{site}" should be a directory that is not group writable.'
    elif what == "pycache-writable":
        pyc = _plant_cache(installed_plugin, 0o666)
        expected = f'"{pyc}" should be a file that is not world writable.'
    elif what == "pycache-dir-owner":
        pyc = _plant_cache(installed_plugin, 0o644)
        os.chown(pyc.parent, NOBODY, NOBODY)
        expected = (f'"{pyc.parent}" should be owned by root or by the daemon\'s '
                    f"user (uid {uid}), not by uid {NOBODY}.")
    else:
        real = tmp_path / "elsewhere.py"
        installed_plugin.rename(real)
        installed_plugin.symlink_to(real)
        expected = (f'"{installed_plugin}" is a symbolic link: plugins are not loaded '
                    "through links.")
    registry = PluginRegistry()
    load_plugins(registry, str(default_dir), None)
    assert [p.name for p in registry.plugins] == ["noop"]
    assert expected in [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert not (tmp_path / "imported").exists()
