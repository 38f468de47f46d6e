"""The Prometheus configuration and rules (toolkit/prometheus.py), checked by Prometheus' own promtool.

promtool comes with Debian's prometheus package. Without it the promtool tests skip,
except under CI (environment variable CI set), where they fail: CI must not pass by
skipping them. The unit tests of the rules (tests/data/prometheus/rules.test.yml)
feed series under the status service's and the router's real metric names.
"""

import dataclasses
import os
import re
import shutil
import subprocess

import pytest
import yaml

from agentkit import manifest, prometheus

from conftest import REPO

DATA = REPO / "tests" / "data" / "prometheus"
RUNBOOK_URL = "https://runbook.example/agentkit.md"  # what rules.test.yml expects


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian package prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: .ci/run must install it", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def reference():
    return manifest.load(str(REPO / "agents"))


@pytest.fixture(scope="module")
def watched():
    """The small fleet: Model.Loader has a cold_start_slo of 2min, the others the default."""
    return manifest.load(str(DATA / "fleet"))


def write(directory, rendered) -> dict:
    """Write the rendered files under `directory`; their paths by base name."""
    paths = {}
    for item in rendered:
        path = directory / item.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(item.text)
        paths[path.name] = path
    return paths


def run(argv) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def rules_of(rendered) -> list[dict]:
    (rules,) = [f for f in rendered if f.path == prometheus.RULES]
    return [rule for group in yaml.safe_load(rules.text)["groups"] for rule in group["rules"]]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6} +(.+?) *#* *$", line)):
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("fleet", ["reference", "watched"])
def test_promtool_accepts_the_configuration_and_the_rules(promtool, tmp_path, request, fleet):
    paths = write(tmp_path, prometheus.files(request.getfixturevalue(fleet)))
    out = run([promtool, "check", "config", str(paths["prometheus.yml"])])
    assert "1 rule files found" in out  # rule_files resolved beside the configuration
    run([promtool, "check", "rules", str(paths["agentkit-rules.yml"])])


def test_every_alert_fires_in_promtools_unit_tests(promtool, tmp_path, watched):
    paths = write(tmp_path, prometheus.files(watched, runbook=RUNBOOK_URL))
    tests = paths["agentkit-rules.yml"].parent / "rules.test.yml"
    shutil.copy(DATA / "rules.test.yml", tests)
    run([promtool, "test", "rules", str(tests)])
    # One test group per alert, and each of them expects its alert to fire.
    groups = yaml.safe_load(tests.read_text())["tests"]
    alerts = {rule["alert"] for rule in rules_of(prometheus.files(watched))}
    assert {group["name"] for group in groups} == alerts
    for group in groups:
        assert any(t["alertname"] == group["name"] and t["exp_alerts"] for t in group["alert_rule_test"]), group["name"]


def test_an_agent_with_its_own_slo_gets_its_own_cold_start_rule(watched):
    cold = [r for r in rules_of(prometheus.files(watched)) if r["alert"] == "AgentkitColdStartSlow"]
    assert [(r["labels"]["cold_start_slo"], r["expr"].rpartition(" > ")[2]) for r in cold] == [("30s", "30"),
                                                                                              ("2min", "120")]
    assert cold[0]["expr"].count('{agent!~"Model\\\\.Loader"}') == 2  # the shared rule leaves it out
    assert cold[1]["expr"].count('{agent=~"Model\\\\.Loader"}') == 2


def test_the_slo_most_agents_share_gets_the_shared_rule(watched):
    agents = {name: dataclasses.replace(a, cold_start_slo=10_000_000) for name, a in watched.agents.items()}
    (cold,) = [r for r in rules_of(prometheus.files(dataclasses.replace(watched, agents=agents)))
               if r["alert"] == "AgentkitColdStartSlow"]
    assert cold["labels"]["cold_start_slo"] == "10s" and "{agent" not in cold["expr"]
    assert cold["expr"].endswith(" > 10")


def test_one_target_per_host_at_its_address_and_status_port(reference, watched):
    config = yaml.safe_load(prometheus.files(reference)[0].text)
    assert config["global"] == {"scrape_interval": "15s", "evaluation_interval": "15s"}
    assert config["rule_files"] == ["agentkit-rules.yml"]
    status, router = config["scrape_configs"]
    assert status["job_name"] == "agentkit-status" and status["honor_labels"] is True
    assert status["static_configs"] == [{"targets": ["mainpc:8202"], "labels": {"host": "mainpc"}},
                                        {"targets": ["pc2:9202"], "labels": {"host": "pc2"}}]
    assert router == {"job_name": "agentkit-router",
                      "static_configs": [{"targets": ["mainpc:8090"], "labels": {"host": "mainpc"}}]}

    config = yaml.safe_load(prometheus.files(watched, {"alpha": "alpha.lan"}, interval=1)[0].text)
    assert config["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    assert [c["targets"] for job in config["scrape_configs"] for c in job["static_configs"]] == [
        ["alpha.lan:8202"], ["[fd00::2]:9202"], ["alpha.lan:8090"]]


def test_no_router_no_router_job_nor_rules(watched):
    rendered = prometheus.files(dataclasses.replace(watched, router=None))
    config = yaml.safe_load(rendered[0].text)
    assert [job["job_name"] for job in config["scrape_configs"]] == ["agentkit-status"]
    assert not [r for r in rules_of(rendered) if "router" in r["expr"]]


def test_the_same_manifest_renders_the_same_text(reference):
    assert prometheus.files(reference) == prometheus.files(manifest.load(str(REPO / "agents")))


@pytest.mark.parametrize("fleet", ["reference", "watched"])
def test_every_alert_links_to_its_section_of_the_runbook(request, fleet):
    runbook = (REPO / "docs" / "runbook.md").read_text()
    anchors = github_anchors(runbook)
    for rule in rules_of(prometheus.files(request.getfixturevalue(fleet), runbook=RUNBOOK_URL)):
        assert set(rule["labels"]) >= {"severity"} and rule["labels"]["severity"] in ("critical", "warning")
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}
        assert annotations["runbook_url"] == f"{RUNBOOK_URL}#{rule['alert'].lower()}"
        assert rule["alert"].lower() in anchors, f"docs/runbook.md has no heading {rule['alert']}"
    for link in re.findall(r"\]\(#([^)]+)\)", runbook):  # the runbook's links to its own sections
        assert link in anchors
