"""What `Metrics()` registers, read from the code, so docs, alerts and the dashboard can be
checked against it rather than against a hand-kept list."""

from __future__ import annotations

import re

from prometheus_client.metrics import MetricWrapperBase

from vpnd.metrics import Metrics

# the series each metric type puts on the wire, besides its own name
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created")}
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Documented name (counters with `_total`) -> (type, label names)."""
    out = {}
    for m in vars(Metrics()).values():
        if isinstance(m, MetricWrapperBase):
            name = m._name + ("_total" if m._type == "counter" else "")
            out[name] = (m._type, tuple(m._labelnames))
    return out


def exposed_series() -> set[str]:
    """Every series name a scrape of vpnd can contain."""
    names = set()
    for m in vars(Metrics()).values():
        if isinstance(m, MetricWrapperBase):
            names |= {m._name + s for s in SUFFIXES[m._type]}
    return names


# PromQL words that are not metric names
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "bool", "and", "or", "unless", "offset", "rate", "irate", "increase",
    "delta", "idelta", "changes", "resets", "absent", "absent_over_time", "time", "vector",
    "scalar", "clamp_min", "clamp_max", "clamp", "histogram_quantile", "label_replace",
    "max_over_time", "min_over_time", "avg_over_time", "sum_over_time", "count_over_time",
    "last_over_time", "topk", "bottomk", "sort", "sort_desc", "abs", "round", "timestamp",
    "le", "inf", "nan", "group", "floor", "ceil",
}


def metric_names_in(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that name series (labels, strings, durations,
    functions and Grafana variables removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)                     # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                    # range selectors
    expr = re.sub(r"\boffset\s+-?[0-9smhdwy]+", "", expr)       # offset modifiers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)                   # Grafana variables
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]", w)}
