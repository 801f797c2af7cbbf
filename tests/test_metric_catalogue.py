"""One catalogue of metric names (mrcdiag/metrics.py): every name a collector emits, a
dashboard panel queries or an alert rule uses is in it, and the throttle reasons agree."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from fakes.fake_amdsmi import make_fake_amdsmi, mi300
from fakes.fake_pynvml import FakeGpu, make_fake_nvml
from test_infiniband import write_port

from mrcdiag import metrics
from mrcdiag.collectors import amd, infiniband, nvml
from mrcdiag.collectors.host import HostCollector
from mrcdiag.collectors.ranks import RankCollector
from mrcdiag.store.synthetic import SyntheticSpec, write_synthetic_run

REPO = Path(__file__).resolve().parent.parent
# Histograms are served as _bucket, _sum and _count; counters as NAME_total.
_SERVED_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def _catalogued(name: str) -> bool:
    if name in metrics.CATALOGUE or f"{name}_total" in metrics.CATALOGUE:
        return True
    return any(
        name.endswith(s) and name.removesuffix(s) in metrics.CATALOGUE for s in _SERVED_SUFFIXES
    )


def _names_in(promql: str) -> set[str]:
    return set(re.findall(r"\bmrcdiag_[a-z_]+\b", promql))


def test_every_sample_a_collector_stores_is_catalogued(tmp_path: Path) -> None:
    common = {"job": "j", "node": "n"}
    write_port(
        tmp_path / "ib",
        "mlx5_0",
        1,
        {"port_xmit_data": 1, "link_downed": 0},
        hw={"roce_adp_retrans": 0},
    )
    collectors = [
        HostCollector(common, list),
        nvml.create(common, list, nvml=make_fake_nvml([FakeGpu(), FakeGpu()])),
        amd.create(common, list, amdsmi=make_fake_amdsmi([mi300()])),
        infiniband.create(common, list, sysfs_root=tmp_path / "ib"),
    ]
    names = {s.name for c in collectors for _ in range(2) for s in c.read()}
    assert {n.split("_")[1] for n in names} >= {"host", "gpu", "fabric"}
    assert sorted(n for n in names if n not in metrics.CATALOGUE) == []


def test_every_rank_metric_served_is_catalogued(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", SyntheticSpec(ranks=2, steps=20))
    families = list(RankCollector(run_dir, "j", "node-0000").collect())
    served = {s.name for family in families for s in family.samples}
    assert served and sorted(n for n in served if not _catalogued(n)) == []


def test_every_name_in_dashboards_and_alert_rules_is_catalogued() -> None:
    used: set[str] = set()
    for path in (REPO / "dashboards").glob("*.json"):
        used |= _names_in(path.read_text())
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules/mrcdiag.rules.yml").read_text())
    recorded = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= _names_in(rule["expr"])
            recorded.add(rule.get("record", ""))
    assert len(used) > 20
    assert sorted(n for n in used if not _catalogued(n) and n not in recorded) == []


def test_alerts_and_dashboards_use_the_catalogued_throttle_reasons() -> None:
    rules = (REPO / "deploy/prometheus/rules/mrcdiag.rules.yml").read_text()
    (alerting,) = re.findall(r'clock_event_active\{reason=~"([^"]+)"\}', rules)
    assert sorted(alerting.split("|")) == sorted(metrics.ALERTING_THROTTLE_REASONS)
    dashboards = " ".join(p.read_text() for p in (REPO / "dashboards").glob("*.json"))
    shown = set(re.findall(r'reason=~\\"([^"\\]+)\\"', dashboards))
    assert shown == {"|".join(metrics.THROTTLE_REASONS)}
