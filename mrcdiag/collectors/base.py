"""What every collector shares: a typed sample, and turning samples into metric families.

A collector reads its source once per call of `read()` and returns `Sample`s; `collect()`
(the prometheus_client protocol) renders the same samples, and the node agent writes
them to the run directory, so the endpoint and the report see the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mrcdiag.store.samples import format_labels


@dataclass(frozen=True)
class Sample:
    name: str  # full metric name; counters end in _total
    value: float
    labels: tuple[tuple[str, str], ...] = ()
    kind: str = "gauge"  # or "counter"
    help: str = ""

    def key(self) -> str:
        """The labels as the run directory stores them."""
        return format_labels(self.labels)


def families(samples: Iterable[Sample], common: dict[str, str]) -> Iterator[Metric]:
    """Group samples by name into families, adding the labels every series carries."""
    by_name: dict[str, list[Sample]] = {}
    for s in samples:
        by_name.setdefault(s.name, []).append(s)
    common_keys = list(common)
    common_values = [common[k] for k in common_keys]
    for name, group in by_name.items():
        first = group[0]
        keys = common_keys + [k for k, _ in first.labels]
        if first.kind == "counter":
            family: Metric = CounterMetricFamily(
                name.removesuffix("_total"), first.help or name, labels=keys
            )
        else:
            family = GaugeMetricFamily(name, first.help or name, labels=keys)
        for s in group:
            family.add_metric(common_values + [v for _, v in s.labels], s.value)
        yield family


class SampleCollector:
    """Base for collectors: subclasses implement read(); collect() follows from it."""

    def __init__(self, common_labels: dict[str, str]) -> None:
        self.common_labels = common_labels

    def read(self) -> list[Sample]:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        try:
            samples = self.read()
        except Exception:  # a broken source yields nothing, the scrape works
            return
        yield from families(samples, self.common_labels)

    def describe(self) -> list[Metric]:
        return []  # no fixed description: families depend on what the machine has
