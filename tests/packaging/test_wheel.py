"""The release as a user gets it: the sdist and the wheel `python -m build` makes, `twine
check` on both, and the wheel (not the source tree) installed into a fresh venv, then run.

Catches what the editable install hides: a module, migration script or `py.typed` left
out of the wheel, a second top-level import name, a version that differs between the
metadata and `cronloop --version`. The build and the install happen once per session
(about 30 s, dependencies from the configured index or pip's cache); every command is
bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import cronloop
from tests.support import mariadb
from tests.support.env import base_env

SOURCE = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 240.0
INSTALL_TIMEOUT_S = 300.0
COMMAND_TIMEOUT_S = 90.0

# run inside the fresh venv: what the installed distribution put into site-packages
INSPECT = """
import json, sys
from importlib import metadata
dist = metadata.distribution("cronloop")
files = [str(f) for f in dist.files or ()]
tops = sorted({f.split("/")[0] for f in files
               if not f.startswith("..") and ".dist-info/" not in f and "/" in f})
print(json.dumps({"version": dist.version, "files": files, "top_level": tops,
                  "license": dist.metadata.get("License-Expression")}))
"""


@dataclass(frozen=True)
class Installed:
    """The fresh venv holding the built wheel."""

    dist_dir: Path
    venv: Path
    work: Path  # a directory outside the source tree, for the commands' cwd

    @property
    def cronloop(self) -> Path:
        return self.venv / "bin" / "cronloop"

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return _run([str(self.cronloop), *args], COMMAND_TIMEOUT_S, self.work, env)


def _run(
    argv: Sequence[str], timeout_s: float, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env=env if env is not None else base_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _must(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        raise AssertionError(f"{what}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("packaging")
    dist_dir, venv, work = root / "dist", root / "venv", root / "work"
    work.mkdir()
    env = {**base_env(), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # sdist first, then the wheel from the sdist: what a user's pip would do from PyPI
    build = [sys.executable, "-m", "build", "--outdir", str(dist_dir), str(SOURCE)]
    _must(_run(build, BUILD_TIMEOUT_S, work, env), "python -m build")
    # a venv of the interpreter under test, outside the source tree, without our venv's
    # packages; the wheel brings its dependencies from the configured index
    base = getattr(sys, "_base_executable", sys.executable)
    _must(_run([base, "-m", "venv", str(venv)], INSTALL_TIMEOUT_S, work, env), "venv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(_wheel(dist_dir))]
    _must(_run(pip, INSTALL_TIMEOUT_S, work, env), "pip install the wheel")
    yield Installed(dist_dir, venv, work)


def _wheel(dist_dir: Path) -> Path:
    wheels = sorted(dist_dir.glob("cronloop-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {dist_dir}: {wheels}"
    return wheels[0]


@pytest.fixture(scope="session")
def contents(installed: Installed) -> dict[str, object]:
    python = str(installed.venv / "bin" / "python")
    out = _must(_run([python, "-c", INSPECT], COMMAND_TIMEOUT_S, installed.work), "inspect")
    parsed: dict[str, object] = json.loads(out)
    return parsed


def test_build_makes_an_sdist_and_a_wheel_that_twine_accepts(installed: Installed) -> None:
    version = cronloop.__version__
    sdists = sorted(installed.dist_dir.glob("cronloop-*.tar.gz"))
    assert [p.name for p in sdists] == [f"cronloop-{version}.tar.gz"]
    assert _wheel(installed.dist_dir).name == f"cronloop-{version}-py3-none-any.whl"
    twine = [sys.executable, "-m", "twine", "check", "--strict", *map(str, [*sdists])]
    twine.append(str(_wheel(installed.dist_dir)))
    out = _must(_run(twine, COMMAND_TIMEOUT_S, installed.work), "twine check")
    assert out.count("PASSED") == 2, out


def test_version_is_the_one_in_the_source(
    installed: Installed, contents: dict[str, object]
) -> None:
    proc = installed.run("--version")
    assert _must(proc, "cronloop --version").strip() == f"cronloop {cronloop.__version__}"
    assert contents["version"] == cronloop.__version__
    assert contents["license"] == "AGPL-3.0-or-later"


def test_the_wheel_adds_one_import_name_typed_with_every_migration(
    contents: dict[str, object],
) -> None:
    assert contents["top_level"] == ["cronloop"]
    files = set(contents["files"])  # type: ignore[call-overload]
    assert "cronloop/py.typed" in files
    assert "cronloop/migrations/script.py.mako" in files
    assert "cronloop/migrations/env.py" in files
    assert any(f.endswith(".dist-info/licenses/LICENSE") for f in files), "LICENSE missing"
    core = {f"cronloop/migrations/versions/{p.name}" for p in _scripts("migrations/versions")}
    standard = {f"cronloop/standard/migrations/{p.name}" for p in _scripts("tasks/migrations")}
    assert core and standard
    assert core <= files, sorted(core - files)
    assert standard <= files, sorted(standard - files)


def _scripts(folder: str) -> list[Path]:
    return list((SOURCE / folder).glob("[0-9]*.py"))


def _env_for_run(state_dir: Path) -> tuple[dict[str, str], list[str]]:
    """The scrubbed environment without the blanket root permission: as root, the
    command line says `--allow-root` as a user's would."""
    env = base_env(state_dir=state_dir)
    del env["CRONLOOP_ALLOW_ROOT"]
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    return env, ["--allow-root"] if root else []


def test_run_once_on_sqlite_migrates_and_runs(installed: Installed, tmp_path: Path) -> None:
    env, flags = _env_for_run(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path / 'cronloop.db'}"
    proc = installed.run("run", "--once", f"--database_url={url}", *flags, env=env)
    _must(proc, "cronloop run --once")
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert events, proc.stderr
    first = events[0]
    assert (first["event"], first["version"]) == ("cronloop starting", cronloop.__version__)
    assert any(e["event"] == "worker stopped" and e["exit_code"] == 0 for e in events)
    status = installed.run("status", "--json", f"--database_url={url}", *flags, env=env)
    tasks = json.loads(_must(status, "cronloop status --json"))
    assert tasks, "the standard tasks should be in the task table"


@pytest.mark.mariadb
def test_migrate_on_mariadb_creates_then_keeps_the_schema(installed: Installed) -> None:
    with mariadb.scratch_database("cronloop_pkg") as db:
        url = f"--database_url={db.url('mysql+aiomysql')}"
        first = _must(installed.run("migrate", url), "cronloop migrate")
        assert first.startswith("schema migrated: empty -> "), first
        again = _must(installed.run("migrate", url), "cronloop migrate again")
        assert again.startswith("schema already current"), again
