"""ops/: the alert rules and the Grafana dashboard are valid PromQL over metrics Orion exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser as pp
import pytest
import yaml
from prometheus_client import Histogram

from orion_streams import metrics

OPS = Path(__file__).resolve().parents[2] / "ops"
RULES = OPS / "alerts.yml"
RULE_TESTS = OPS / "alerts.test.yml"
DASHBOARD = OPS / "grafana" / "orion-overview.json"
README = OPS / "README.md"

# Series Prometheus itself adds to every target.
PROMETHEUS_SERIES = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SEVERITIES = {"page", "ticket"}
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}


# --- PromQL helpers ----------------------------------------------------------------------------

def _children(node: Any) -> list[Any]:
    if isinstance(node, pp.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, pp.AggregateExpr):
        return [node.expr] + ([node.param] if node.param is not None else [])
    if isinstance(node, pp.Call):
        return list(node.args)
    if isinstance(node, pp.MatrixSelector):
        return [node.vector_selector]
    if isinstance(node, pp.ParenExpr | pp.UnaryExpr | pp.SubqueryExpr):
        return [node.expr]
    if isinstance(node, pp.VectorSelector | pp.NumberLiteral | pp.StringLiteral):
        return []
    raise AssertionError(f"unexpected PromQL node {type(node).__name__}: {node}")


def _walk(node: Any) -> Iterator[Any]:
    yield node
    for child in _children(node):
        yield from _walk(child)


def selector_names(expr: str) -> set[str]:
    """Metric names of every selector in `expr` (raises ValueError on invalid PromQL)."""
    names = set()
    for node in _walk(pp.parse(expr)):
        if not isinstance(node, pp.VectorSelector):
            continue
        name = node.name or next(
            (m.value for m in node.matchers.matchers if m.name == "__name__" and m.op == pp.MatchOp.Equal),
            None,
        )
        assert name, f"a selector without a metric name in {expr!r}: {node}"
        names.add(name)
    return names


@cache
def exported() -> frozenset[str]:
    return frozenset(metrics.names()) | PROMETHEUS_SERIES


@cache
def histograms() -> frozenset[str]:
    return frozenset(
        family.name for value in vars(metrics).values() if isinstance(value, Histogram)
        for family in value.describe()
    )


def family(series: str) -> str | None:
    """The exported family a series name belongs to; None if Orion exports no such series."""
    if series in exported() and series not in histograms():
        return series
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and base in histograms():
            return base
    return None


def families(expr: str) -> set[str]:
    found = {name: family(name) for name in selector_names(expr)}
    unknown = sorted(name for name, fam in found.items() if fam is None)
    assert not unknown, f"not exported by orion_streams.metrics: {unknown} in {expr!r}"
    return {fam for fam in found.values() if fam is not None}


_VALUE_ONLY = {"vector", "scalar", "time", "pi"}
_DATA_DEPENDENT = {"absent", "absent_over_time", "label_replace", "label_join", "sort_by_label"}
_COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}


def output_labels(node: Any) -> frozenset[str] | None:
    """Labels every series of the result carries, or None when that depends on the data."""
    if isinstance(node, pp.NumberLiteral | pp.StringLiteral):
        return frozenset()
    if isinstance(node, pp.VectorSelector | pp.MatrixSelector):
        return None
    if isinstance(node, pp.ParenExpr | pp.UnaryExpr | pp.SubqueryExpr):
        return output_labels(node.expr)
    if isinstance(node, pp.AggregateExpr):
        if str(node.op) in {"topk", "bottomk", "limitk", "limit_ratio"}:
            return output_labels(node.expr)
        if str(node.op) == "count_values" or (
            node.modifier is not None and node.modifier.type == pp.AggModifierType.Without
        ):
            return None
        return frozenset(node.modifier.labels) if node.modifier is not None else frozenset()
    if isinstance(node, pp.Call):
        name = node.func.name
        if name in _VALUE_ONLY:
            return frozenset()
        if name in _DATA_DEPENDENT:
            return None
        vectors = [arg for arg in node.args if not isinstance(arg, pp.NumberLiteral | pp.StringLiteral)]
        labels = output_labels(vectors[0]) if vectors else frozenset()
        return labels - {"le"} if name == "histogram_quantile" and labels is not None else labels
    assert isinstance(node, pp.BinaryExpr), f"unexpected PromQL node {type(node).__name__}"
    lhs, rhs = output_labels(node.lhs), output_labels(node.rhs)
    op, modifier = str(node.op), node.modifier
    if op == "or":
        known = [labels for labels in (lhs, rhs) if labels is not None]
        return frozenset.intersection(*known) if known else None
    if op in {"and", "unless"}:
        return lhs
    if isinstance(node.lhs, pp.NumberLiteral):
        return rhs
    if isinstance(node.rhs, pp.NumberLiteral) or modifier is None or modifier.matching is None:
        return lhs
    card, matching = modifier.card, modifier.matching
    if card == pp.VectorMatchCardinality.ManyToOne:
        return None if lhs is None else lhs | set(modifier.group_labels)
    if card == pp.VectorMatchCardinality.OneToMany:
        return None if rhs is None else rhs | set(modifier.group_labels)
    if op in _COMPARISONS and not modifier.return_bool:
        return lhs
    if matching.type == pp.LabelModifierType.Include:
        return frozenset(matching.labels) if lhs is None else lhs & set(matching.labels)
    return None if lhs is None else lhs - set(matching.labels)


# --- alert rules -------------------------------------------------------------------------------

@cache
def rule_groups() -> list[dict[str, Any]]:
    with RULES.open() as f:
        document = yaml.safe_load(f)
    assert isinstance(document, dict) and set(document) == {"groups"}, "only `groups:` at the top"
    groups = document["groups"]
    assert isinstance(groups, list) and groups
    return groups


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group.get("rules") or []]


def rule_id(rule: dict[str, Any]) -> str:
    return str(rule.get("alert") or rule.get("record"))


RULE_PARAMS = [pytest.param(rule, id=rule_id(rule)) for rule in all_rules()]


def test_rule_groups_have_unique_names_and_rules() -> None:
    names = [group.get("name") for group in rule_groups()]
    assert all(isinstance(name, str) and name for name in names)
    assert len(names) == len(set(names)), f"duplicate group names: {names}"
    for group in rule_groups():
        assert set(group) <= {"name", "interval", "limit", "query_offset", "labels", "rules"}, f"unknown keys in group {group['name']}"
        assert group.get("rules"), f"group {group['name']} has no rules"
    alerts = [rule.get("alert") for rule in all_rules()]
    assert len(alerts) == len(set(alerts)), "duplicate alert names"


@pytest.mark.parametrize("rule", RULE_PARAMS)
def test_alert_rule_shape(rule: dict[str, Any]) -> None:
    assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule) <= RULE_KEYS, sorted(rule)
    assert re.fullmatch(r"Orion[A-Z][A-Za-z0-9]+", rule["alert"])
    assert isinstance(rule["expr"], str) and rule["expr"].strip()
    assert re.fullmatch(r"0|(\d+(ms|[smhdwy]))+", rule["for"]), f"for: {rule['for']!r}"
    assert rule["labels"].get("severity") in SEVERITIES
    annotations = rule["annotations"]
    for key in ("summary", "description"):
        assert isinstance(annotations.get(key), str) and annotations[key].strip(), f"no {key}"
    # The description tells the operator where to look: more than a restatement of the summary.
    assert len(annotations["description"]) >= 80


@pytest.mark.parametrize("rule", RULE_PARAMS)
def test_alert_expr_is_promql_over_exported_metrics(rule: dict[str, Any]) -> None:
    assert families(rule["expr"])


@pytest.mark.parametrize("rule", RULE_PARAMS)
def test_alert_templates_use_labels_the_expr_keeps(rule: dict[str, Any]) -> None:
    kept = output_labels(pp.parse(rule["expr"]))
    text = " ".join(str(value) for value in rule["annotations"].values())
    used = set(re.findall(r"\$labels\.(\w+)", text))
    if kept is not None:
        assert used <= kept, f"{sorted(used - kept)} are aggregated away by {rule['expr']!r}"


@pytest.mark.parametrize("rule", RULE_PARAMS)
def test_alert_has_a_runbook_section(rule: dict[str, Any]) -> None:
    anchor = rule["alert"].lower()
    assert rule["annotations"].get("runbook") == f"ops/README.md#{anchor}"
    assert re.search(rf"^### {rule['alert']}$", README.read_text(), re.MULTILINE)


REQUIRED_ALERTS = {
    "HTTP error rate": "orion_http_requests_total",
    "POST /v1/orders latency": "orion_http_request_duration_seconds",
    "order decision latency": "orion_order_decision_seconds",
    "orders stuck": "orion_orders_placed_total",
    "payment failures": "orion_orders_total",
    "consumer lag": "orion_consumer_lag",
    "dead letters": "orion_dead_letters_total",
    "email failures": "orion_emails_total",
    "low stock": "orion_stock_available",
    "table recovery": "orion_table_recovery_in_progress",
    "database errors": "orion_db_errors_total",
    "database latency": "orion_db_query_duration_seconds",
    "database pool": "orion_db_pool_connections_in_use",
    "worker down": "up",
}


@pytest.mark.parametrize("metric", REQUIRED_ALERTS.values(), ids=list(REQUIRED_ALERTS))
def test_required_topic_has_an_alert(metric: str) -> None:
    assert any(metric in families(rule["expr"]) for rule in all_rules()), f"no alert on {metric}"


def test_low_stock_is_a_ticket_and_out_of_stock_pages() -> None:
    severities = {
        rule["labels"]["severity"] for rule in all_rules()
        if "orion_stock_available" in families(rule["expr"])
    }
    assert severities == SEVERITIES
    out = [rule for rule in all_rules() if "orion_stock_available" in rule["expr"] and "== 0" in rule["expr"]]
    assert [rule["labels"]["severity"] for rule in out] == ["page"]


def test_rule_unit_tests_cover_the_key_alerts() -> None:
    with RULE_TESTS.open() as f:
        document = yaml.safe_load(f)
    assert document["rule_files"] == [RULES.name]
    tested = {case["alertname"] for test in document["tests"] for case in test.get("alert_rule_test", [])}
    assert {"OrionDeadLetters", "OrionStockLow", "OrionStockOut", "OrionConsumerLagHigh"} <= tested
    assert tested <= {rule["alert"] for rule in all_rules()}, "tests name alerts that do not exist"
    for test in document["tests"]:
        for series in test["input_series"]:
            assert families(series["series"]), series["series"]


# --- dashboard ---------------------------------------------------------------------------------

@cache
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel but rows, including those inside collapsed rows."""
    found = []
    for panel in dashboard()["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels") or [])
        else:
            found.append(panel)
    return found


def variables() -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in dashboard()["templating"]["list"]}


# Values that make a Grafana query plain PromQL.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
VARIABLE_VALUES = {"job": "orion", "instance": ".*"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr: str) -> str:
    defined = set(variables())

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        assert name in defined, f"${name} is not a dashboard variable"
        return VARIABLE_VALUES.get(name, "x")

    return _VARIABLE.sub(value, expr)


def panel_targets() -> list[Any]:
    return [
        pytest.param(panel, target, id=f"{panel['title']}/{target.get('refId')}")
        for panel in dashboard_panels() for target in panel.get("targets") or []
    ]


def test_dashboard_shape() -> None:
    board = dashboard()
    assert board["title"] and board["uid"]
    assert 36 <= board["schemaVersion"] <= 41
    datasource = variables().get("DS_PROMETHEUS")
    assert datasource and datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    nested = [panel for row in board["panels"] for panel in row.get("panels") or []]
    ids = [panel["id"] for panel in board["panels"] + nested]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = [panel["title"] for panel in board["panels"] if panel.get("type") == "row"]
    assert {"HTTP", "Orders", "Stock", "PostgreSQL", "WebSockets"} <= set(rows)


@pytest.mark.parametrize("panel", [pytest.param(p, id=p["title"]) for p in dashboard_panels()])
def test_panel_queries_prometheus(panel: dict[str, Any]) -> None:
    assert panel["type"] in {"timeseries", "stat", "table", "gauge", "bargauge"}
    assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    targets = panel.get("targets")
    assert targets, "a panel without queries"
    assert len({t["refId"] for t in targets}) == len(targets)
    for target in targets:
        assert target.get("expr", "").strip() and "legendFormat" in target


@pytest.mark.parametrize(("panel", "target"), panel_targets())
def test_panel_query_is_promql_over_exported_metrics(panel: dict[str, Any], target: dict[str, Any]) -> None:
    assert families(substitute(target["expr"]))


def test_variable_queries_use_exported_metrics() -> None:
    for var in variables().values():
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"variable {var['name']}: {query}"
        assert families(substitute(match.group(1)))


DASHBOARD_METRICS = {
    "orion_http_requests_total", "orion_http_request_duration_seconds",
    "orion_orders_accepted_total", "orion_orders_placed_total", "orion_orders_total",
    "orion_order_decision_seconds", "orion_order_confirmation_seconds",
    "orion_reservations_total", "orion_stock_available", "orion_stock_low_threshold",
    "orion_consumer_lag", "orion_table_recovery_seconds", "orion_table_recovery_in_progress",
    "orion_emails_total", "orion_email_delivery_seconds", "orion_dead_letters_total",
    "orion_websocket_connections", "orion_websocket_messages_total", "orion_websocket_dropped_total",
    "orion_db_query_duration_seconds", "orion_db_errors_total", "orion_db_slow_queries_total",
    "orion_db_pool_connections_in_use", "orion_db_pool_size",
}


def test_dashboard_shows_the_required_metrics() -> None:
    shown = set().union(*(families(substitute(t["expr"])) for p in dashboard_panels() for t in p["targets"]))
    assert DASHBOARD_METRICS - shown == set()


# --- self-checks of the helpers ----------------------------------------------------------------

def test_helpers_reject_what_they_should() -> None:
    with pytest.raises(ValueError):
        pp.parse("sum(rate(orion_orders_total[5m])")
    with pytest.raises(AssertionError, match="not exported"):
        families("rate(orion_no_such_thing_total[5m])")
    with pytest.raises(AssertionError, match="not exported"):
        families("rate(orion_orders_total_bucket[5m])")  # a counter has no buckets
    assert families('histogram_quantile(0.9, sum by (le) (rate(orion_db_query_duration_seconds_bucket[5m])))') == {
        "orion_db_query_duration_seconds"
    }
    assert families('{__name__="orion_consumer_lag"} > 1') == {"orion_consumer_lag"}
    assert substitute('rate(x{job=~"$job", instance=~"${instance:regex}"}[$__rate_interval])') == (
        'rate(x{job=~"orion", instance=~".*"}[5m])'
    )
    with pytest.raises(AssertionError, match="not a dashboard variable"):
        substitute("x{a=\"$nope\"}")
    assert output_labels(pp.parse("sum by (a, le) (x) > 1")) == {"a", "le"}
    assert output_labels(pp.parse("histogram_quantile(0.9, sum by (a, le) (rate(x[5m])))")) == {"a"}
    assert output_labels(pp.parse("sum by (a) (x) / on (a) group_left (b) y")) == {"a", "b"}
    assert output_labels(pp.parse("sum(x) or vector(0)")) == set()
    assert output_labels(pp.parse("x > 1")) is None


# --- promtool ----------------------------------------------------------------------------------

def promtool() -> str | None:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


def test_promtool_checks_and_tests_the_rules() -> None:
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not found (put it on PATH or set PROMTOOL)")
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, cwd=OPS.parent)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
