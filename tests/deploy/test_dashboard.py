"""The Grafana dashboard's shape: importable with a Prometheus data source input, one panel per
place on the grid, a query on every panel (the queries themselves are run against a real
Prometheus in tests/e2e/test_prometheus_e2e.py)."""

from __future__ import annotations

import json

from tests.support.prometheus import DASHBOARD


def test_dashboard_shape() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36 and dash["uid"] == "gtm-overview"
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert {v["name"] for v in dash["templating"]["list"]} == {"DS_PROMETHEUS", "region"}
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    boxes = [(p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"], p["gridPos"]["h"], p["title"]) for p in panels]
    for i, (x, y, w, h, title) in enumerate(boxes):
        assert x + w <= 24, title
        for x2, y2, w2, h2, other in boxes[i + 1:]:
            assert not (x < x2 + w2 and x2 < x + w and y < y2 + h2 and y2 < y + h), f"{title} overlaps {other}"
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"] and all(t["expr"] and t["datasource"] == p["datasource"] for t in p["targets"]), p["title"]
        assert p["description"], p["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("region health", "weights per pool", "report age", "plan time", "provider lag", "provider errors",
                  "rejected reports", "drill"):
        assert topic in titles, topic
