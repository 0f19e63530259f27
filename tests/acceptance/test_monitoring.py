"""The monitoring kit (monitoring/) against a real worker: `promtool check metrics` on its
/metrics, `promtool check rules` and `promtool test rules` on the alerts, and every
metric the alerts and the Grafana dashboard name exists in what the worker serves.

Skipped without promtool (Debian's `prometheus` package), except under
`CRONLOOP_REQUIRE_PROMTOOL=1` (CI), where a missing promtool fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.conftest import Cli
from tests.acceptance.test_web import start_web
from tests.support.http import call

KIT = Path(__file__).resolve().parents[2] / "monitoring"
RULES = KIT / "cronloop-alerts.yml"
DASHBOARD = KIT / "cronloop-dashboard.json"
PROMTOOL_TIMEOUT_S = 60.0
NAME_RE = re.compile(r"\bcronloop_[a-z_]+")


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CRONLOOP_REQUIRE_PROMTOOL") == "1":
            pytest.fail("CRONLOOP_REQUIRE_PROMTOOL=1 but no promtool (apt-get install prometheus)")
        pytest.skip("no promtool (apt-get install prometheus)")
    return found


def _promtool(promtool: str, *args: str, stdin: str | None = None) -> None:
    result = subprocess.run(
        [promtool, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=KIT,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_the_rules_are_valid_and_fire_when_they_should(promtool: str) -> None:
    _promtool(promtool, "check", "rules", RULES.name)
    _promtool(promtool, "test", "rules", "cronloop-alerts.test.yml")


def test_a_real_worker_serves_every_metric_the_kit_uses(sqlite_cli: Cli, promtool: str) -> None:
    worker, listen = start_web(sqlite_cli, "quick")
    worker.wait_for("run finished", task="quick")
    text = call(listen, "GET", "/metrics").text
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    _promtool(promtool, "check", "metrics", stdin=text)

    served = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    exprs = [
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel["targets"]
    ]
    used = set(NAME_RE.findall(RULES.read_text())) | {
        name for expr in exprs for name in NAME_RE.findall(expr)
    }
    assert used, "the kit names no metric?"
    assert used <= served, f"named by the kit, not served: {sorted(used - served)}"
