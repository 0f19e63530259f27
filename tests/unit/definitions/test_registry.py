"""@task definitions, discovery and per-task settings."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from cronloop.config.settings import ConfigError, load_settings
from cronloop.definitions.registry import TaskDefinitionError, build_registry, discover, task


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return name


def _settings(tmp_path: Path, text: str = "") -> object:
    path = tmp_path / "test.params"
    path.write_text(text)
    path.chmod(0o600)
    return load_settings(param_file=str(path), env={})


def test_a_sync_function_without_blocking_is_refused_with_its_name() -> None:
    with pytest.raises(TaskDefinitionError, match=r"task 'plain'.*not `async def`"):

        @task(every=10)
        def plain(ctx: object) -> None: ...


def test_exactly_one_schedule_is_required() -> None:
    with pytest.raises(TaskDefinitionError, match="task 'two'"):

        @task(every=10, cron="* * * * *")
        async def two(ctx: object) -> None: ...

    with pytest.raises(TaskDefinitionError, match="task 'none'"):

        @task()
        async def none(ctx: object) -> None: ...


def test_bad_timeout_and_bad_at_are_refused() -> None:
    with pytest.raises(TaskDefinitionError, match="timeout"):

        @task(every=10, timeout=-1)
        async def neg(ctx: object) -> None: ...

    with pytest.raises(TaskDefinitionError, match="9:30"):

        @task(at="9:30")
        async def early(ctx: object) -> None: ...


def test_discovery_by_module_and_settings_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _module(
        tmp_path,
        monkeypatch,
        "reg_mod_a",
        """
        from cronloop import task

        @task(at="23:30", days="monday,friday", options={"retention_count": 5, "label": "x"})
        async def backup(ctx):
            "Nightly backup."
            return None

        @task(every=60, name="gc")
        async def garbage(ctx):
            return None
    """,
    )
    definitions = discover([mod], use_entry_points=False)
    assert sorted(d.name for d in definitions) == ["backup", "gc"]
    settings = _settings(
        tmp_path, "backup.time = 01:15\nbackup.retention_count = 7\ngc.enabled = 0\n"
    )
    registry = build_registry(settings, definitions)  # type: ignore[arg-type]
    backup = registry["backup"]
    assert "01:15" in backup.schedule_text and "mon" in backup.schedule_text
    assert backup.options == {"retention_count": 7, "label": "x"}
    assert backup.description == "Nightly backup."
    assert not registry["gc"].runnable and registry["gc"].error is None


def test_a_bad_schedule_setting_disables_only_that_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _module(
        tmp_path,
        monkeypatch,
        "reg_mod_b",
        """
        from cronloop import task

        @task(at="23:30")
        async def nightly(ctx):
            return None

        @task(every=5)
        async def frequent(ctx):
            return None
    """,
    )
    settings = _settings(tmp_path, "nightly.time = 9:30\n")
    registry = build_registry(settings, discover([mod], use_entry_points=False))  # type: ignore[arg-type]
    assert not registry["nightly"].runnable
    assert "test.params:1" in (registry["nightly"].error or "")
    assert registry["frequent"].runnable


def test_unknown_task_or_option_is_a_config_error_with_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _module(
        tmp_path,
        monkeypatch,
        "reg_mod_c",
        """
        from cronloop import task

        @task(every=5)
        async def email(ctx):
            return None
    """,
    )
    definitions = discover([mod], use_entry_points=False)
    with pytest.raises(
        ConfigError, match=r"test.params:1.*no task named 'emial'.*did you mean 'email'"
    ):
        build_registry(_settings(tmp_path, "emial.enabled = 0\n"), definitions)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"test.params:2.*unknown setting email.colour"):
        build_registry(_settings(tmp_path, "email.every = 3\nemail.colour = red\n"), definitions)  # type: ignore[arg-type]


def test_a_module_that_fails_to_import_names_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _module(tmp_path, monkeypatch, "reg_mod_broken", "raise RuntimeError('oops')\n")
    with pytest.raises(ConfigError, match=r"reg_mod_broken.*oops"):
        discover([mod], use_entry_points=False)
    with pytest.raises(ConfigError, match="no_such_module_xyz"):
        discover(["no_such_module_xyz"], use_entry_points=False)


def test_duplicate_names_across_modules_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _module(
        tmp_path,
        monkeypatch,
        "reg_dup_a",
        "from cronloop import task\n@task(every=1)\nasync def same(ctx): pass\n",
    )
    b = _module(
        tmp_path,
        monkeypatch,
        "reg_dup_b",
        "from cronloop import task\n@task(every=1)\nasync def same(ctx): pass\n",
    )
    with pytest.raises(TaskDefinitionError, match="defined twice"):
        discover([a, b], use_entry_points=False)


def test_the_standard_tasks_come_from_the_entry_point() -> None:
    names = {d.module for d in discover([], use_entry_points=True)}
    assert names and all(n.startswith("cronloop.standard.") for n in names)


def test_isolate_is_gone_and_passing_it_names_the_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _module(
        tmp_path,
        monkeypatch,
        "reg_isolate",
        "from cronloop import task\n@task(every=10, isolate=True)\nasync def sep(ctx): pass\n",
    )
    with pytest.raises(ConfigError, match=r"reg_isolate.*unexpected keyword argument 'isolate'"):
        discover([mod], use_entry_points=False)


def test_a_module_imported_afresh_contributes_only_what_it_defines_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = "from cronloop import task\n@task(every=1)\nasync def {name}(ctx): pass\n"
    mod = _module(tmp_path, monkeypatch, "reg_fresh", body.format(name="first"))
    assert [d.name for d in discover([mod], use_entry_points=False)] == ["first"]
    mod = _module(tmp_path, monkeypatch, "reg_fresh", body.format(name="second"))
    assert [d.name for d in discover([mod], use_entry_points=False)] == ["second"]
    mod = _module(tmp_path, monkeypatch, "reg_fresh", body.format(name="second"))
    assert [d.name for d in discover([mod], use_entry_points=False)] == ["second"]  # not twice


def test_tasks_made_in_a_loop_or_inside_a_function_are_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _module(
        tmp_path,
        monkeypatch,
        "reg_programmatic",
        """
        from cronloop import task

        async def noop(ctx):
            return None

        for i in range(3):
            task(noop, every=60, name=f"sync_{i}")

        def define():
            async def inner(ctx):
                return None

            task(every=5, name="inner")(inner)

        define()
    """,
    )
    names = [d.name for d in discover([mod], use_entry_points=False)]
    assert names == ["sync_0", "sync_1", "sync_2", "inner"]


def test_a_task_decorated_in_a_test_reaches_no_other_modules_discovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @task(every=10)
    async def reg_local_only(ctx: object) -> None: ...

    mod = _module(tmp_path, monkeypatch, "reg_plain", "from cronloop import task\n")
    found = {d.name for d in discover([mod], use_entry_points=True)}
    assert "reg_local_only" not in found and found


def test_a_package_contributes_its_submodules_tasks_and_not_imported_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "reg_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from reg_pkg import jobs\nfrom reg_other import borrowed\n")
    (pkg / "jobs.py").write_text(
        "from cronloop import task\n@task(every=1)\nasync def inner(ctx): pass\n"
    )
    (tmp_path / "reg_other.py").write_text(
        "from cronloop import task\n@task(every=1)\nasync def borrowed(ctx): pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("reg_pkg", "reg_pkg.jobs", "reg_other"):
        sys.modules.pop(name, None)
    assert [d.name for d in discover(["reg_pkg"], use_entry_points=False)] == ["inner"]
    both = discover(["reg_pkg", "reg_other"], use_entry_points=False)
    assert sorted(d.name for d in both) == ["borrowed", "inner"]


def test_option_values_are_converted_with_the_settings_parsers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _module(
        tmp_path,
        monkeypatch,
        "reg_opts",
        """
        from cronloop import task

        @task(every=5, options={"dry_run": False, "smtp_password_len": 8, "port": 25})
        async def mail(ctx):
            return None
    """,
    )
    definitions = discover([mod], use_entry_points=False)
    text = "mail.dry_run = ON\nmail.timeout = 2m\nmail.enabled = no\n"
    spec = build_registry(_settings(tmp_path, text), definitions)["mail"]  # type: ignore[arg-type]
    assert spec.options["dry_run"] is True and spec.timeout_s == 120.0 and not spec.enabled
    with pytest.raises(ConfigError, match="expected a boolean") as info:
        build_registry(_settings(tmp_path, "mail.dry_run = maybe\n"), definitions)  # type: ignore[arg-type]
    assert "maybe" in str(info.value)
    with pytest.raises(ConfigError, match=r"mail.smtp_password_len = \*{8}: expected") as info:
        build_registry(_settings(tmp_path, "mail.smtp_password_len = hunter2\n"), definitions)  # type: ignore[arg-type]
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match=r"mail.port = 'smtp://u:\*{8}@h': expected") as info:
        build_registry(_settings(tmp_path, "mail.port = smtp://u:hunter2@h\n"), definitions)  # type: ignore[arg-type]
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("tâche", "ASCII letter"),
        ("backup.nightly", "ASCII letter"),  # a dot ends the task part of a setting
        ("_hidden", "ASCII letter"),
        ("9lives", "ASCII letter"),
        ("with space", "ASCII letter"),
        ("t" * 191, "191 characters long; at most 190"),
    ],
)
def test_a_task_name_the_settings_or_database_cannot_hold_is_refused(name: str, why: str) -> None:
    async def job(ctx: object) -> None: ...

    with pytest.raises(TaskDefinitionError, match=why) as caught:
        task(job, every=60, name=name)
    assert str(caught.value).startswith("task ") and "job" in str(caught.value)


def test_the_longest_name_that_fits_and_dashes_are_accepted() -> None:
    async def job(ctx: object) -> None: ...

    for name in ("t" * 190, "Sync-Users_2", "a"):
        task(job, every=60, name=name)


@pytest.mark.parametrize("other", ["Same", "SAME", "same"])
def test_names_differing_only_by_case_or_dash_are_one_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    body = "from cronloop import task\n@task(every=1, name={!r})\nasync def f(ctx): pass\n"
    a = _module(tmp_path, monkeypatch, "reg_case_a", body.format("same"))
    b = _module(tmp_path, monkeypatch, "reg_case_b", body.format(other))
    with pytest.raises(TaskDefinitionError, match="defined twice"):
        discover([a, b], use_entry_points=False)
    two = "from cronloop import task\nasync def f(ctx): pass\n"
    two += "task(f, every=1, name='sync-users')\ntask(f, every=1, name='sync_users')\n"
    c = _module(tmp_path, monkeypatch, "reg_case_c", two)
    with pytest.raises(TaskDefinitionError, match="'sync_users' is defined twice"):
        discover([c], use_entry_points=False)
