"""The Grafana dashboard (examples/grafana/pxdbg-farm.json), checked offline.

No Grafana server can be installed here (Debian has no package; the project is AGPL and not used), so the JSON is
read by the models of Grafana's own dashboard schema (`grafana-foundation-sdk`, generated from Grafana's schema
kinds): a round trip through them must keep every field and value we wrote, so a field the schema does not know
is caught. Every panel's PromQL is parsed by promtool (as a recording rule, with Grafana's variables filled in)
and may read only the families a real producer and `pxdbg farm jobs` export, or the shipped recording rules.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from ops_helpers import exported_families, metric_names, promtool, rule_exprs

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "examples" / "grafana" / "pxdbg-farm.json"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def lost_in_round_trip(written, read, path: str = "") -> list[str]:
    """Paths of fields in ``written`` that the schema models dropped or changed (defaults they add are fine)."""
    if isinstance(written, dict) and isinstance(read, dict):
        out = []
        for key, value in written.items():
            out += [f"{path}/{key}"] if key not in read else lost_in_round_trip(value, read[key], f"{path}/{key}")
        return out
    if isinstance(written, list) and isinstance(read, list) and len(written) == len(read):
        return [p for i, (a, b) in enumerate(zip(written, read)) for p in lost_in_round_trip(a, b, f"{path}[{i}]")]
    return [] if written == read else [path]


def through_schema(doc: dict) -> dict:
    from grafana_foundation_sdk.models.dashboard import Dashboard

    model = Dashboard.from_json(copy.deepcopy(doc))
    return json.loads(json.dumps(model.to_json(), default=lambda o: o.to_json()))


def test_every_field_is_in_grafanas_dashboard_schema(dashboard):
    pytest.importorskip("grafana_foundation_sdk", reason="pip install grafana-foundation-sdk (in the test extra)")
    assert lost_in_round_trip(dashboard, through_schema(dashboard)) == []
    bad = copy.deepcopy(dashboard)  # the check can fail: a misspelt field is dropped by the models
    bad["panels"][0]["gridPoss"] = bad["panels"][0].pop("gridPos")
    bad["templating"]["list"][1]["inculdeAll"] = True
    assert set(lost_in_round_trip(bad, through_schema(bad))) == {
        "/panels[0]/gridPoss",
        "/templating/list[1]/inculdeAll",
    }


def test_layout_and_topics(dashboard):
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids) and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    cells = set()
    for p in panels:  # no two panels overlap on the 24-column grid
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
    text = " ".join(p["title"] + " " + p["description"] for p in panels).lower()
    for topic in ("throughput", "per producer", "p99", "pending", "consumers", "refus", "gpu memory", "consumer wait"):
        assert topic in text, topic


def panel_exprs(dashboard) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    # Grafana fills these in before Prometheus sees the query
    return [e.replace("$__rate_interval", "5m").replace("$instance", ".*") for e in exprs]


def test_every_query_parses_and_reads_exported_metrics(dashboard, tmp_path, python_env):
    exprs = panel_exprs(dashboard)
    assert not any("$" in e for e in exprs)
    rules = {
        "groups": [{"name": "dashboard", "rules": [{"record": f"panel:q{i}", "expr": e} for i, e in enumerate(exprs)]}]
    }
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules))
    proc = subprocess.run([promtool(), "check", "rules", str(tmp_path / "panels.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recorded, _ = rule_exprs()
    used = set().union(*(metric_names(e) for e in exprs))
    assert used - exported_families(tmp_path, python_env) - recorded == set()
