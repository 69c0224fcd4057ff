"""deploy/prometheus/alerts.yml: valid for promtool, unit-tested, on real metrics, with a runbook."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import API_KEYS, AS_ALPHA, VALID
from tests.signing import FORM, form
from tests.test_metrics import scrape

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
METRIC = re.compile(r"\bmms_[a-z_]+\b")


def rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool (skipped without it, except in CI, where .ci/run installs it)."""
    if shutil.which("promtool") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is required in CI (.ci/run installs it)")
        pytest.skip("promtool not installed (see .ci/run)")
    return subprocess.run(
        ["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_promtool_checks_the_rules():
    """`promtool check rules` accepts the file."""
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_fire_every_alert():
    """`promtool test rules` passes, and its cases make every alert fire at least once."""
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    fired = {
        case["alertname"]
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {"MmsCircuitOpen", "MmsUpstreamErrorRate"} <= fired
    assert fired == {rule["alert"] for rule in rules()}


async def test_alerts_and_runbook_use_only_exported_metrics(
    settings_factory, client_for, fake_plivo
):
    """Every mms_* name in alerts.yml and the runbook is a series the app exports."""
    # The webhook series exist once an endpoint is configured (its name is a label); this
    # one is never called (bravo sends nothing).
    settings = settings_factory(
        api_keys=API_KEYS,
        webhooks="bravo=http://127.0.0.1:9/hook",
        webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    async with client_for(settings) as client:
        assert (await client.post("/api/mms/send", json=VALID, headers=AS_ALPHA)).status_code == 200
        # mms_callbacks_total has no series before the first callback (its labels vary).
        callback = await client.post("/api/mms/status", content=form({}), headers=FORM)
        assert callback.status_code == 403
        exported = {name for name, _ in await scrape(client)}
    used = set(METRIC.findall(ALERTS.read_text())) | set(METRIC.findall(RUNBOOK.read_text()))
    assert used, "no metric names found"
    assert used <= exported, sorted(used - exported)


def _anchor(heading: str) -> str:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_labels_annotations_and_a_runbook_section():
    """severity, summary, description, and a runbook_url whose section says what to do."""
    text = RUNBOOK.read_text()
    sections = {
        _anchor(m.group(1)): body
        for m, body in zip(
            re.finditer(r"^## (.+)$", text, re.M),
            re.split(r"^## .+$", text, flags=re.M)[1:],
            strict=True,
        )
    }
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        url = annotations["runbook_url"]
        assert url == f"docs/runbook.md#{rule['alert'].lower()}", rule["alert"]
        body = sections[url.split("#")[1]]
        for part in ("**Means**", "**Confirm**", "**Do**", "**Don't**"):
            assert part in body, (rule["alert"], part)
