"""Plugin loading (spec §4.3–4.7), ported from the C test-plugin scenarios."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from mptcpd.plugins.loader import PluginLoadError, load_plugins
from mptcpd.plugins.registry import PluginRegistry

FIXTURES = Path(__file__).resolve().parents[1] / "plugins"


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


def test_a_group_writable_directory_loads(tmp_path: Path) -> None:
    registry = load(fixture_dir(tmp_path, "noop", mode=0o770))
    assert [p.name for p in registry.plugins] == ["noop"]


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


def test_entry_point_plugins_load_after_the_directory(
    tmp_path: Path, installed_plugin: Path
) -> None:
    registry = PluginRegistry()
    load_plugins(registry, str(fixture_dir(tmp_path, "noop")), None)
    assert [(p.name, p.source) for p in registry.plugins] == [
        ("ep_demo", "entry point ep_demo = mptcpd_ep_demo"),
        ("noop", str(tmp_path / "plugins" / "noop.py")),
    ]
    assert set(registry.get("ep_demo").impls) == {"new_connection"}  # type: ignore[union-attr]


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


def test_a_world_writable_entry_point_module_is_refused(
    tmp_path: Path, installed_plugin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    installed_plugin.chmod(0o666)
    registry = PluginRegistry()
    load_plugins(registry, str(fixture_dir(tmp_path, "noop")), None)
    assert [p.name for p in registry.plugins] == ["noop"]
    assert f'"{installed_plugin}" should be a file that is not world writable.' in caplog.text
    assert not (tmp_path / "imported").exists()  # refused before any of it ran
