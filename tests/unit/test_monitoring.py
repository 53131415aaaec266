"""docs/monitoring/ stays usable: the alert rules pass promtool's check and their own unit
tests, and the alerts and the Grafana dashboard only query series vpnd (or Prometheus)
actually produces, so a renamed metric breaks this test, not an operator's dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vpnd_testing.metric_names import PROMETHEUS_OWN, exposed_series, metric_names_in

MON = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
RULES = MON / "alerts.yml"
RULE_TESTS = MON / "alerts_test.yml"
DASHBOARD = MON / "grafana-dashboard.json"
KNOWN = exposed_series() | PROMETHEUS_OWN

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package prometheus; scripts/bootstrap installs it)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          cwd=MON)


@needs_promtool
def test_rules_pass_promtool_check():
    r = promtool("check", "rules", RULES.name)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_rules_pass_their_unit_tests():
    r = promtool("test", "rules", RULE_TESTS.name)
    assert r.returncode == 0, r.stdout + r.stderr


def rule_exprs() -> dict[str, str]:
    """alert name -> expr, read from the file as written (single line or a `>-` block)."""
    out, alert = {}, None
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"\s+- alert: (\w+)", line):
            alert = m[1]
        elif m := re.match(r"(\s+)expr: (.*)$", line):
            if m[2] != ">-":
                out[alert] = m[2]
                continue
            indent, body = len(m[1]), []
            for follow in lines[i + 1:]:
                if len(follow) - len(follow.lstrip()) <= indent:
                    break
                body.append(follow.strip())
            out[alert] = " ".join(body)
    return out


def test_alerts_cover_the_issue():
    assert {"VpndTunnelDown", "VpndConnectionDown", "VpndFailover", "VpndProbeLossHigh",
            "VpndBgpSessionDown", "VpndConfigReloadFailed", "VpndDown",
            "VpndAbsent"} <= set(rule_exprs())


@pytest.mark.parametrize("alert", sorted(rule_exprs()))
def test_alerts_use_existing_metrics(alert):
    unknown = metric_names_in(rule_exprs()[alert]) - KNOWN
    assert not unknown, f"{alert} queries series vpnd does not export: {unknown}"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, template variable and annotation."""
    d = dashboard()
    out = [(f"panel {p['title']!r}", t["expr"]) for p in d["panels"] for t in p.get("targets", [])]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            out.append((f"variable {v['name']}", m[1] if m else q))
    out += [(f"annotation {a['name']!r}", a["expr"]) for a in d["annotations"]["list"]]
    return out


def test_dashboard_is_valid_grafana_json():
    d = dashboard()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in d["panels"]:
        assert set(p["gridPos"]) == {"h", "w", "x", "y"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["targets"], f"panel {p['title']!r} has no query"


def test_dashboard_has_the_panels_operators_need():
    titles = {p["title"] for p in dashboard()["panels"]}
    assert {"Tunnel state", "Active tunnel", "Probe RTT (mean and p95)", "Probe loss", "Failovers",
            "BGP sessions", "SA throughput", "Configuration reloads"} <= titles


@pytest.mark.parametrize("where,expr", dashboard_queries(), ids=lambda x: x[:60])
def test_dashboard_uses_existing_metrics(where, expr):
    names = metric_names_in(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    assert not names - KNOWN, f"{where} queries series vpnd does not export: {names - KNOWN}"


def test_the_name_check_catches_a_typo():
    assert metric_names_in('rate(vpnd_probes_sent{job="x"}[5m])') - KNOWN == {"vpnd_probes_sent"}
    assert metric_names_in(
        'histogram_quantile(0.95, sum by (le, tunnel) (rate(vpnd_probe_rtt_seconds_bucket[$__rate_interval])))'
    ) == {"vpnd_probe_rtt_seconds_bucket"}


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends: its variables substituted."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses every dashboard query, written out as recording rules."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(dashboard_queries()):
        lines += [f"      - record: dashboard:query{i}", f"        expr: {json.dumps(grafana_to_promql(expr))}"]
    rules = tmp_path / "dashboard.rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    r = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_state_timeline_encodes_each_state_as_its_mapping(tmp_path):
    """The 'Tunnel state' panel turns the one-hot series into one number per tunnel; promtool
    evaluates it for every state and the panel's value mapping must name that state."""
    from vpnd.metrics import TUNNEL_STATES

    panel = next(p for p in dashboard()["panels"] if p["title"] == "Tunnel state")
    expr = grafana_to_promql(panel["targets"][0]["expr"])
    mapping = {int(k): v["text"] for k, v in
               panel["fieldConfig"]["defaults"]["mappings"][0]["options"].items()}
    assert set(mapping.values()) == set(TUNNEL_STATES)
    (tmp_path / "r.yml").write_text(
        "groups:\n  - name: s\n    rules:\n      - record: tunnel:state_code\n"
        f"        expr: {json.dumps(expr)}\n")
    series, expected = [], []
    for i, current in enumerate(TUNNEL_STATES):
        for s in TUNNEL_STATES:
            series.append(f"      - series: 'vpnd_tunnel_state{{job=\"vpnd\",connection=\"c\","
                          f"tunnel=\"t{i}\",state=\"{s}\"}}'\n        values: '{int(s == current)}x2'")
        code = next(k for k, v in mapping.items() if v == current)
        expected.append(f"          - labels: 'tunnel:state_code{{job=\"vpnd\",connection=\"c\","
                        f"tunnel=\"t{i}\"}}'\n            value: {code}")
    (tmp_path / "t.yml").write_text(
        "rule_files: [r.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n"
        "    input_series:\n" + "\n".join(series) + "\n    promql_expr_test:\n"
        f"      - expr: tunnel:state_code\n        eval_time: 1m\n        exp_samples:\n"
        + "\n".join(expected) + "\n")
    r = subprocess.run(["promtool", "test", "rules", "t.yml"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
