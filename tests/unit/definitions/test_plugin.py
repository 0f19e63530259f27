"""The plugin seam: plugins found through a real entry point (a `.dist-info` folder on
sys.path, as an installed package has), a plugin that fails to load named in the error,
task discovery through a plugin's task modules, and its migrations, metadata and
commands."""

from __future__ import annotations

import argparse
import textwrap
import uuid
from pathlib import Path

import pytest

from cronloop import Command, Plugin
from cronloop.config.settings import ConfigError
from cronloop.definitions.discovery import discover
from cronloop.definitions.plugin import (
    commands_of,
    load_plugins,
    migration_folders,
    plugin_metadata,
)


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: dict[str, str]) -> str:
    """A fake installed distribution on sys.path whose `entry_points.txt` puts `entries`
    (name -> "module:attr") in a group of its own; the group's name."""
    group = f"cronloop.test_plugins_{uuid.uuid4().hex[:8]}"
    info = tmp_path / "fakeplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugin\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
    monkeypatch.syspath_prepend(str(tmp_path))
    return group


def module(tmp_path: Path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


def test_a_plugin_is_loaded_through_its_entry_point_and_its_tasks_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = uuid.uuid4().hex[:6]
    module(
        tmp_path,
        f"acme_tasks_{tag}",
        """
        from cronloop import task

        @task(every=60)
        async def acme_sweep(ctx): ...
        """,
    )
    module(
        tmp_path,
        f"acme_plugin_{tag}",
        f"""
        from cronloop import Plugin
        plugin = Plugin(name="acme", task_modules=("acme_tasks_{tag}",))
        """,
    )
    group = install(tmp_path, monkeypatch, {"acme": f"acme_plugin_{tag}:plugin"})
    (plugin,) = load_plugins(group)
    assert plugin.name == "acme" and group in plugin.where() and "'acme'" in plugin.where()
    found = discover([], plugins=[plugin])
    assert [d.name for d in found] == ["acme_sweep"]
    assert discover([], use_entry_points=False) == []  # no plugin unless asked


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("raise ImportError('no acme here')\n", ["cannot load plugin 'broken'", "no acme here"]),
        ("plugin = 42\n", ["plugin 'broken'", "is a int, not a cronloop Plugin"]),
    ],
    ids=["import-fails", "not-a-plugin"],
)
def test_a_plugin_that_fails_to_load_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, words: list[str]
) -> None:
    name = f"broken_plugin_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.py").write_text(body)
    group = install(tmp_path, monkeypatch, {"broken": f"{name}:plugin"})
    with pytest.raises(ConfigError) as info:
        load_plugins(group)
    for word in [*words, f"{name}:plugin", group]:
        assert word in str(info.value)


def test_a_task_module_a_plugin_names_but_cannot_import_names_the_plugin() -> None:
    plugin = Plugin(name="ghost", task_modules=("no_such_module_for_ghost",))
    with pytest.raises(ConfigError, match=r"no_such_module_for_ghost.*plugin 'ghost'"):
        discover([], plugins=[plugin])


def test_the_standard_plugin_gives_its_migrations_and_metadata() -> None:
    (standard,) = [p for p in load_plugins() if p.name == "standard"]
    (folder,) = migration_folders([standard])
    assert (Path(folder) / "0002_outbox.py").exists()
    (metadata,) = plugin_metadata([standard])
    assert {"cronloop_outbox", "cronloop_ticket"} <= set(metadata.tables)
    assert migration_folders([Plugin(name="bare")]) == []
    with pytest.raises(ConfigError, match=r"plugin 'odd': metadata 'cronloop\.sql:nothing'"):
        plugin_metadata([Plugin(name="odd", metadata="cronloop.sql:nothing")])


def test_commands_keep_their_names_and_a_clash_names_both_sides() -> None:
    hello = Command("hello", "say hello", lambda ctx: 0)
    one = Plugin(name="one", commands=(hello,))
    assert dict(commands_of([one], ["run", "status"])) == {"hello": hello}
    with pytest.raises(ConfigError, match="plugin 'two': command 'status' is already defined"):
        commands_of(
            [Plugin(name="two", commands=(Command("status", "", lambda c: 0),))], ["status"]
        )
    with pytest.raises(ConfigError, match="command 'hello' is already defined by plugin 'one'"):
        commands_of([one, Plugin(name="two", commands=(hello,))], [])
    parser = argparse.ArgumentParser()
    hello.add_arguments(parser)  # the default declares no arguments
    assert vars(parser.parse_args([])) == {}
