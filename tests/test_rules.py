"""deploy/prometheus passes promtool, and every alert has unit tests that fire and stay quiet."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROM = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (apt-get install prometheus)",
)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=PROM)


def test_config_and_rules_are_valid() -> None:
    configs = [
        *PROM.glob("*.yml"),
        *PROM.glob("scale/*.yml"),
        PROM.parent / "docker-compose" / "prometheus.yml",
    ]
    assert len(configs) == 4
    for config in configs:
        result = promtool("check", "config", "--syntax-only", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
    for rules in (PROM / "rules").glob("*.yml"):
        result = promtool("check", "rules", str(rules))
        assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", "tests/mrcdiag.rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    rules = yaml.safe_load((PROM / "rules" / "mrcdiag.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "tests" / "mrcdiag.rules.test.yml").read_text())
    fired, expected = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            expected.add(check["alertname"])
            if check["exp_alerts"]:
                fired.add(check["alertname"])
    assert fired == alerts
    for rule in (r for g in rules["groups"] for r in g["rules"] if "alert" in r):
        assert rule.get("for") and rule["annotations"].get("runbook"), rule["alert"]


def test_deploy_manifests_parse() -> None:
    deploy = PROM.parent
    for path in [*deploy.glob("kubernetes/*.yaml"), *deploy.glob("docker-compose/**/*.yml")]:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert documents, path
    kinds = {
        d["kind"]
        for d in yaml.safe_load_all((deploy / "kubernetes" / "agent-daemonset.yaml").read_text())
    }
    assert {"DaemonSet", "Service", "PodMonitor"} <= kinds
    for script in deploy.glob("slurm/*"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
