"""The benchmarks' harness (``bench/harness``): what it measures, in what order, and what it writes.

No timing here: the bursts are stand-ins that return fixed figures, so that the
rotation's order, its medians and ratios, and the results file can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.harness import Burst, Plan, Target, markdown_table, results, rotate, write_results
from bench.harness.servers import Server


@dataclass(frozen=True)
class _Scripted(Target):
    """A target whose bursts return ``rates`` in turn and record when they ran."""

    rates: tuple[float, ...] = ()
    log: list[str] = field(default_factory=list)

    def burst(self, seconds: int) -> Burst:
        self.log.append(self.label)
        rate = self.rates[(len([x for x in self.log if x == self.label]) - 1) % len(self.rates)]
        return Burst(int(rate * seconds), float(seconds), 1.0, rate / 10, 0, 0, 0)


def _targets(log: list[str], **rates: tuple[float, ...]) -> list[Target]:
    server: Server = None  # type: ignore[assignment]  # never started: the bursts are scripted
    return [
        _Scripted(label, server, "/", Path("x.lua"), rates=values, log=log)
        for label, values in rates.items()
    ]


def test_each_round_visits_every_server_the_order_reversed_every_other_round() -> None:
    log: list[str] = []
    targets = _targets(log, a=(1.0,), b=(1.0,), c=(1.0,))
    rotate("order", targets, Plan(rounds=3, seconds=1, warmup_seconds=1))
    warmup, rounds = log[:3], log[3:]
    assert warmup == ["a", "b", "c"]
    assert rounds == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]


def test_figures_are_medians_of_the_rounds_and_ratios_of_medians() -> None:
    log: list[str] = []
    # The first value is the warm-up's, left out of every figure.
    targets = _targets(log, a=(999.0, 100.0, 300.0, 800.0), b=(1.0, 50.0, 100.0, 400.0))
    rotation = rotate("figures", targets, Plan(rounds=3, seconds=2, warmup_seconds=1))
    assert rotation.rate("a") == 300.0
    assert rotation.rate("b") == 100.0
    assert rotation.p99("a") == 30.0
    assert rotation.ratio("a", "b") == 3.0
    assert rotation.round_ratios("a", "b") == [2.0, 3.0, 2.0]
    assert rotation.noise("a", "b") == "2.00-3.00"
    assert rotation.problems == []


def test_a_round_with_failures_is_reported_as_a_problem() -> None:
    rotation = rotate("failing", _targets([], a=(10.0,)), Plan(1, 1, 1))
    assert rotation.problems == []
    # A server that logged "database is locked" is a problem even when wrk saw only 2xx.
    rotation.bursts["a"][0] = Burst(10, 1.0, 1.0, 2.0, non_2xx=0, socket_errors=0, locked=2)
    assert rotation.problems == [
        'failing, a: 0 non-2xx answers, 0 socket errors, 2 "database is locked" in its log'
    ]


def test_results_are_written_with_when_how_and_a_quick_run_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    table = markdown_table(["stack", "req/s"], [["layer", "1,000"]])
    path = write_results("example", "How it ran.", table, quick=True)
    text = path.read_text()
    assert path == tmp_path / "example.md"
    assert text.startswith("Written by `python bench/example.py` on ")
    assert "How it ran." in text
    assert "not a measurement" in text
    assert text.rstrip().endswith("| stack | req/s |\n| --- | ---: |\n| layer | 1,000 |")
    full = write_results("example", "How it ran.", table).read_text()
    assert "not a measurement" not in full
