"""deploy/grafana and deploy/prometheus: the cem-node dashboard reads only what the node exports.

Neither Grafana nor Prometheus runs here, so these tests read the files: every metric
that a panel's PromQL names is one that the node's /metrics serves (the exposition of a
real :class:`~cem_node.monitoring.NodeMetrics`, over a database holding a row in every
state), with labels and label values it has; the provisioning points Grafana at the
dashboard and the data source that the dashboard names; and compose.yaml mounts these
files where Grafana and Prometheus read them, publishing neither beyond loopback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import pytest
import yaml  # pyyaml, in the dev extra
from prometheus_client.parser import text_string_to_metric_families

from cem_node.config import load_settings
from cem_node.monitoring import NodeMetrics
from cem_node.node import Node
from cem_node.store import make_engine, session_factory
from cem_node.store.models import Base, Export, ExportState, Job, JobState, Study, StudyState

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "cem-node.yaml"
DASHBOARD = GRAFANA / "dashboards" / "cem-node.json"

#: series that Prometheus writes for each scrape target, not the node
SCRAPE_SERIES = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}

#: PromQL's functions and aggregation operators (a name followed by "(")
PROMQL_FUNCTIONS = {
    # aggregations
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta",
    "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
    "ln", "log2", "log10", "minute", "month", "predict_linear", "rate", "resets", "round",
    "scalar", "sgn", "sort", "sort_desc", "sort_by_label", "sort_by_label_desc", "sqrt",
    "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time",
    "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
    "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time",
}  # fmt: skip
#: labels whose every value the fixture's /metrics (or prometheus.yml) has: a matcher's
#: value must be one of them (a connection's refusal stage is not: only "accept" is seen)
VALUES_CHECKED = {"job", "service", "state", "outcome", "check"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"bool", "offset", "and", "or", "unless", "atan2", "inf", "nan"}

_TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')
      |(?P<matchers>\{(?:"(?:\\.|[^"\\])*"|[^"}])*\})
      |(?P<range>\[[^\]]*\])
      |(?P<number>\d[\w.]*)
      |(?P<var>\$\w+)
      |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<open>\()
      |(?P<close>\))
      |(?P<other>\S)""",
    re.VERBOSE,
)
_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"\s*(?:,|$)')


# --------------------------------------------------------------------------- PromQL


@dataclass
class Selector:
    """One vector selector of an expression: ``name{label op "value", ...}[range]``."""

    name: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)
    ranged: bool = False


@dataclass
class Query:
    selectors: list[Selector]
    grouping: list[str]
    functions: list[str]


def _parse_matchers(block: str, expr: str) -> list[tuple[str, str, str]]:
    body, matchers, pos = block[1:-1].strip(), [], 0
    while pos < len(body):
        match = _MATCHER.match(body, pos)
        assert match, f"cannot read the label matchers {block} of {expr!r}"
        matchers.append((match[1], match[2], match[3]))
        pos = match.end()
    return matchers


def parse_promql(expr: str) -> Query:
    """The metric selectors, grouping labels and functions of a PromQL expression.

    A small reader, enough for dashboards: strings, ``{matchers}``, ``[ranges]`` and
    numbers are tokens of their own; an identifier followed by ``(`` is a function, one
    after ``by``/``without``/``on``/... a label, any other (not a keyword) a metric.
    """
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    query = Query([], [], [])
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "ident" and text in GROUPING:
            if following[0] == "open":  # group_left / group_right may stand alone
                i += 2
                while i < len(tokens) and tokens[i][0] != "close":
                    if tokens[i][0] == "ident":
                        query.grouping.append(tokens[i][1])
                    i += 1
        elif kind == "ident" and text.lower() in KEYWORDS:
            pass
        elif kind == "ident" and (following[0] == "open" or following[1] in ("by", "without")):
            query.functions.append(text)  # `sum by (le) (...)`: an aggregation too
        elif kind == "ident" or kind == "matchers":
            selector = Selector(name=text if kind == "ident" else "")
            if kind == "ident" and following[0] == "matchers":
                i += 1
            if tokens[i][0] == "matchers":
                selector.matchers = _parse_matchers(tokens[i][1], expr)
            if not selector.name:  # {__name__="..."}
                names = [v for label, op, v in selector.matchers if label == "__name__"]
                assert names and len(names) == 1, f"a selector without a metric in {expr!r}"
                selector.name = names[0]
            if i + 1 < len(tokens) and tokens[i + 1][0] == "range":
                selector.ranged = True
                i += 1
            query.selectors.append(selector)
        i += 1
    return query


def test_promql_reader_finds_metrics_labels_and_functions() -> None:
    query = parse_promql(
        'histogram_quantile(0.95, sum by (le) (rate(cem_node_analysis_seconds_bucket{job="x",'
        ' state=~"a|b"}[$__rate_interval]))) / on (instance) group_left up offset 5m'
    )
    assert [(s.name, s.ranged) for s in query.selectors] == [
        ("cem_node_analysis_seconds_bucket", True),
        ("up", False),
    ]
    assert query.selectors[0].matchers == [("job", "=", "x"), ("state", "=~", "a|b")]
    assert query.grouping == ["le", "instance"]
    assert query.functions == ["histogram_quantile", "sum", "rate"]
    # misspelt or unquoted: still read, so the checks below catch them
    assert [s.name for s in parse_promql("max(cem_node_job) or vector(0)").selectors] == [
        "cem_node_job"
    ]
    with pytest.raises(AssertionError, match="label matchers"):
        parse_promql("cem_node_jobs{state=queued}")


# --------------------------------------------------------------------------- the node's /metrics


@dataclass
class Exported:
    """What the node's /metrics serves: sample name -> label names, its family's type,
    and the values seen per (sample name, label)."""

    labels: dict[str, set[str]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)


class _Analyser:
    def __init__(self) -> None:
        self.fail = False

    def analyse(self, request: Any) -> Any:
        if self.fail:
            raise RuntimeError("analysis failed")
        return object()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The exposition of the node's registry, built as the node builds it, over a database
    with a study, a job and an export in each state (the by-state gauges are read from it)."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('metrics') / 'node.db'}")
    Base.metadata.create_all(engine)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        studies = [
            Study(study_instance_uid=f"1.2.826.0.1.3680043.10.9.{n}", state=state)
            for n, state in enumerate(StudyState)
        ]
        session.add_all(studies)
        session.add_all(Job(study=studies[0], state=state) for state in JobState)
        session.add_all(
            Export(
                study=studies[0],
                destination="pacs",
                object_type="sr",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
                sop_instance_uid=f"1.2.826.0.1.3680043.10.9.100.{n}",
                file_path=f"results/{n}.dcm",
                state=state,
                attempts=1,
            )
            for n, state in enumerate(ExportState)
        )
    metrics = NodeMetrics(sessions)
    # the checks of a node with nothing started: the names /healthz uses
    checks = Node.health_checks(SimpleNamespace(_disk=None, scp=None, sessions=None))  # type: ignore[arg-type]
    assert checks, "Node.health_checks names no check"
    metrics.watch_health(lambda: checks)
    # every series of this process's counters and histogram, through the node's own calls
    metrics.instances_received.inc()
    metrics.connections_refused.labels("accept").inc()
    analyser = _Analyser()
    timed = metrics.timed(analyser)  # type: ignore[arg-type]
    timed.analyse(None)
    analyser.fail = True
    with pytest.raises(RuntimeError):
        timed.analyse(None)

    out = Exported()
    text = metrics.exposition().decode()
    engine.dispose()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.labels.setdefault(sample.name, set()).update(sample.labels)
            out.types[sample.name] = family.type
            for label, value in sample.labels.items():
                out.values.setdefault((sample.name, label), set()).add(value)
    return out


def test_the_node_exports_what_the_fixture_expects(exported: Exported) -> None:
    # the fixture reached the database and every collector: otherwise the checks below
    # would compare the dashboard with a partial /metrics
    for name in (
        "cem_node_database_up",
        "cem_node_jobs",
        "cem_node_health_problem",
        "cem_node_analysis_seconds_bucket",
        "cem_node_analyses_total",
    ):
        assert name in exported.labels, name
    assert exported.values[("cem_node_jobs", "state")] == {s.value for s in JobState}
    assert exported.values[("cem_node_analyses_total", "outcome")] == {"ok", "failed"}


# --------------------------------------------------------------------------- files


class _ComposeLoader(yaml.SafeLoader):
    """Safe YAML plus Docker Compose's merge tags."""


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, lambda loader, node: None)


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_ComposeLoader)
    assert isinstance(data, dict), path
    return data


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries() -> Iterator[tuple[str, dict[str, Any], str]]:
    """(panel title, target, expr) of every PromQL query of the dashboard."""
    for panel in _panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target, target["expr"]


def _datasource() -> dict[str, Any]:
    sources = _yaml(DATASOURCES)["datasources"]
    assert len(sources) == 1, sources
    return sources[0]


def _prometheus_targets() -> tuple[dict[str, set[str]], set[str]]:
    """Values of the labels that Prometheus puts on the node's series (job, service) and
    the names of all of them (job, instance and the relabelled ones)."""
    config = _yaml(PROMETHEUS_YML)
    values: dict[str, set[str]] = {"job": set(), "service": set()}
    names = {"job", "instance"}
    for job in config["scrape_configs"]:
        values["job"].add(job["job_name"])
        for relabel in job.get("relabel_configs", []):
            names.add(relabel["target_label"])
        for sd in job.get("dns_sd_configs", []):
            values["service"].update(sd["names"])
    return values, names


def _mounts(service: dict[str, Any]) -> list[tuple[Path, PurePosixPath, str]]:
    """(host path, container path, mode) of a service's bind mounts."""
    out = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith("."):
            host = (COMPOSE.parent / source).resolve()
            out.append((host, PurePosixPath(target), mode[0] if mode else ""))
    return out


def _container_path(service: dict[str, Any], host: Path) -> PurePosixPath | None:
    """Where a file of deploy/ is in the service's container (a file or folder mount)."""
    host = host.resolve()
    for source, target, _ in _mounts(service):
        if host == source or host.is_relative_to(source):
            return target.joinpath(*host.relative_to(source).parts)
    return None


def _read_only(service: dict[str, Any], host: Path) -> bool:
    host = host.resolve()
    return any(
        (host == s or host.is_relative_to(s)) and "ro" in m.split(",")
        for s, _, m in _mounts(service)
    )


def _published(port: Any) -> tuple[str, str]:
    """(host address, host port) of a compose port entry "[address:]host:container"."""
    parts = str(port).split("/", 1)[0].rsplit(":", 2)
    return ("0.0.0.0", parts[0]) if len(parts) == 2 else (parts[0], parts[1])


# --------------------------------------------------------------------------- the dashboard


def test_every_metric_of_the_dashboard_is_exported(exported: Exported) -> None:
    target_values, target_labels = _prometheus_targets()
    queries = list(_queries())
    assert queries
    for title, _, expr in queries:
        query = parse_promql(expr)
        where = f"panel {title!r}: {expr}"
        assert query.selectors, f"{where}: no metric"
        for function in query.functions:
            assert function in PROMQL_FUNCTIONS, f"{where}: no PromQL function {function}()"
        labels_here = set(target_labels)
        for selector in query.selectors:
            name = selector.name
            if name in SCRAPE_SERIES:
                labels = set()
            else:
                assert name in exported.labels, (
                    f"{where}: the node exports no {name} "
                    f"(it exports {sorted(n for n in exported.labels if n.startswith('cem_'))})"
                )
                labels = exported.labels[name]
            labels_here |= labels
            if selector.ranged:  # rate(), increase() ...: counters only
                assert exported.types.get(name) in ("counter", "histogram"), (
                    f"{where}: {name} is a {exported.types.get(name)}, not a counter"
                )
            for label, op, value in selector.matchers:
                assert label in labels | target_labels, f"{where}: {name} has no label {label}"
                known = target_values.get(label) or exported.values.get((name, label))
                if op in ("=", "=~") and known and label in VALUES_CHECKED:
                    wanted = value.split("|") if op == "=~" else [value]
                    for one in wanted:
                        assert one in known, f"{where}: {label}={one!r} never exported ({known})"
        for label in query.grouping:
            assert label in labels_here, f"{where}: grouping by {label}, which no series has"
        if "histogram_quantile" in query.functions:
            assert "le" in query.grouping, f"{where}: histogram_quantile needs `by (le)`"
            assert any(s.name.endswith("_bucket") for s in query.selectors), where


def test_a_misspelt_metric_fails_the_check(exported: Exported) -> None:
    for expr in ("max(cem_node_job)", "rate(cem_node_instances_received[5m])"):
        (selector,) = parse_promql(expr).selectors
        assert selector.name not in exported.labels, expr
    (selector,) = parse_promql('max(cem_node_jobs{state="analysed"})').selectors
    assert "analysed" not in exported.values[(selector.name, "state")]


def test_dashboard_covers_ingest_queue_latency_and_exports() -> None:
    by_metric: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    panel_types = {p["title"]: p["type"] for p in _panels(_dashboard()["panels"])}
    for title, target, expr in _queries():
        for selector in parse_promql(expr).selectors:
            by_metric.setdefault(selector.name, []).append((title, target))
    for name in (
        "cem_node_instances_received_total",  # ingest
        "cem_node_connections_refused_total",
        "cem_node_jobs",  # queue depth
        "cem_node_analysis_seconds_bucket",  # latency
        "cem_node_analyses_total",
        "cem_node_exports",  # export failures
        "cem_node_export_failed_attempts",
    ):
        assert name in by_metric, f"no panel shows {name}"
    latency = by_metric["cem_node_analysis_seconds_bucket"]
    quantiles = {
        re.search(r"histogram_quantile\(\s*([\d.]+)", t["expr"])[1]  # type: ignore[index]
        for _, t in latency
        if "histogram_quantile" in t["expr"]
    }
    assert {"0.5", "0.95", "0.99"} <= quantiles
    heatmaps = [t for title, t in latency if panel_types[title] == "heatmap"]
    assert heatmaps and all(t.get("format") == "heatmap" for t in heatmaps)


def test_dashboard_names_the_provisioned_datasource() -> None:
    source = _datasource()
    assert source["type"] == "prometheus"
    dashboard = _dashboard()
    assert dashboard["uid"] == "cem-node"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    panels = [p for p in _panels(dashboard["panels"]) if p["type"] != "row"]
    assert panels
    for panel in panels:
        expected = {"type": source["type"], "uid": source["uid"]}
        assert panel.get("datasource") == expected, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", expected) == expected, panel["title"]
    # no variable stands in for the data source or a metric
    assert not dashboard.get("templating", {}).get("list")


def test_dashboard_layout_is_sound() -> None:
    panels = list(_panels(_dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"
        for target in panel.get("targets", []):
            assert target["refId"], panel["title"]


# --------------------------------------------------------------------------- provisioning, compose


def test_grafana_provisioning_is_mounted_and_points_to_the_dashboard() -> None:
    grafana = _yaml(COMPOSE)["services"]["grafana"]
    providers = _yaml(PROVIDERS)["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    dashboards_in = PurePosixPath(providers[0]["options"]["path"])
    for host, folder in (
        (DATASOURCES, "/etc/grafana/provisioning/datasources"),
        (PROVIDERS, "/etc/grafana/provisioning/dashboards"),
        (DASHBOARD, str(dashboards_in)),
    ):
        assert host.is_file(), host
        inside = _container_path(grafana, host)
        assert inside is not None, f"compose.yaml does not mount {host.relative_to(DEPLOY)}"
        assert inside.parent == PurePosixPath(folder), f"{host.name} is at {inside}"
        assert _read_only(grafana, host), host
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert PurePosixPath(home) == _container_path(grafana, DASHBOARD)


def test_grafana_reads_the_stacks_prometheus() -> None:
    services = _yaml(COMPOSE)["services"]
    url = re.fullmatch(r"http://([\w-]+):(\d+)/?", _datasource()["url"])
    assert url, _datasource()["url"]
    assert url[1] in services, f"no service {url[1]}"
    listen = [a for a in services[url[1]].get("command", []) if "--web.listen-address" in a]
    assert url[2] == (listen[0].rsplit(":", 1)[1] if listen else "9090")
    assert services["grafana"]["depends_on"][url[1]]


def test_prometheus_scrapes_every_node_process() -> None:
    services = _yaml(COMPOSE)["services"]
    prometheus = services["prometheus"]
    config_file = next(
        (a.split("=", 1)[1] for a in prometheus.get("command", []) if "--config.file=" in a),
        "/etc/prometheus/prometheus.yml",
    )
    assert _container_path(prometheus, PROMETHEUS_YML) == PurePosixPath(config_file)
    assert _read_only(prometheus, PROMETHEUS_YML)
    serving = {n for n, s in services.items() if (s.get("command") or [""])[0] == "serve"}
    assert serving == {"cem-receiver", "cem-worker", "cem-exporter"}
    http = load_settings(DEPLOY / "node.compose.toml", environ={}).http
    # reachable from Prometheus's container: not the node container's loopback
    assert http.enabled and http.host == "0.0.0.0"
    (job,) = [j for j in _yaml(PROMETHEUS_YML)["scrape_configs"] if j["job_name"] == "cem-node"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    scraped = {
        f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for name in sd["names"]
    } | {t for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert scraped == {f"{name}:{http.port}" for name in serving}
    # the dashboard's job="..." is this job
    assert {"cem-node"} == {
        v
        for _, _, expr in _queries()
        for s in parse_promql(expr).selectors
        for label, _, v in s.matchers
        if label == "job"
    }


def test_grafana_and_prometheus_are_private() -> None:
    services = _yaml(COMPOSE)["services"]
    for name in ("grafana", "prometheus"):
        assert services[name]["image"].split(":")[-1] not in ("", "latest"), name
        assert re.search(r":v?\d+\.\d+\.\d+}?$", services[name]["image"]), "pin the tag"
        ports = [_published(p) for p in services[name]["ports"]]
        assert ports and all(address == "127.0.0.1" for address, _ in ports), name
        assert services[name].get("healthcheck", {}).get("test"), name
    host_ports = [
        _published(p)[1] for service in services.values() for p in service.get("ports", [])
    ]
    assert len(host_ports) == len(set(host_ports)), f"a host port twice: {host_ports}"
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    example = (DEPLOY / "env.example").read_text(encoding="utf-8")
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", example, flags=re.MULTILINE)
