"""What a benchmark comparison measured, and the table ``bench/uow.py`` prints of it."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

THRESHOLD = 0.97


@dataclass(frozen=True)
class Sample:
    """One wrk run: requests per second, and requests per CPU-second of the server."""

    rate: float
    cpu_rate: float | None


def _median_ratio(layer: list[float], base: list[float]) -> float:
    return statistics.median(layer) / statistics.median(base) if base and all(base) else 0.0


@dataclass
class Result:
    database: str
    endpoint: str
    layer_label: str
    base_label: str
    layer: list[Sample] = field(default_factory=list)
    base: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def layer_median(self) -> float:
        return statistics.median(s.rate for s in self.layer)

    @property
    def base_median(self) -> float:
        return statistics.median(s.rate for s in self.base)

    @property
    def ratio(self) -> float:
        """The verdict's number: median req/s of the layer over median req/s of the base."""
        return _median_ratio([s.rate for s in self.layer], [s.rate for s in self.base])

    @property
    def round_ratios(self) -> list[float]:
        return [
            a.rate / b.rate if b.rate else 0.0 for a, b in zip(self.layer, self.base, strict=True)
        ]

    @property
    def cpu_ratio(self) -> float | None:
        """The same from requests per CPU-second of the server: less sensitive to neighbours."""
        layer = [s.cpu_rate for s in self.layer if s.cpu_rate]
        base = [s.cpu_rate for s in self.base if s.cpu_rate]
        if len(layer) != len(self.layer) or len(base) != len(self.base):
            return None
        return _median_ratio(layer, base)

    def interval(self, level: float = 0.9, draws: int = 2000) -> tuple[float, float]:
        """A bootstrap interval of ``ratio``, resampling whole rounds: how far noise moves it."""
        rng = random.Random(0)
        pairs = list(zip(self.layer, self.base, strict=True))
        ratios = sorted(
            _median_ratio([a.rate for a, _ in draw], [b.rate for _, b in draw])
            for draw in (rng.choices(pairs, k=len(pairs)) for _ in range(draws))
        )
        tail = int(draws * (1 - level) / 2)
        return ratios[tail], ratios[-tail - 1]

    @property
    def verdict(self) -> str:
        if self.problems:
            return "INVALID"
        return "PASS" if self.ratio >= THRESHOLD else "FAIL"


def print_table(results: list[Result]) -> None:
    header = (
        f"{'database':<11}{'endpoint':<16}{'A vs B':<17}{'A req/s':>8}{'B req/s':>9}"
        f"{'A/B':>7}  {'90% interval':<13} {'verdict':<8}{'paired':>7}{'CPU A/B':>8}"
    )
    print(f"\nmedians over the rounds; verdict: A/B >= {THRESHOLD:.2f}")
    print(header)
    print("-" * len(header))
    for r in results:
        cpu = "n/a" if r.cpu_ratio is None else f"{r.cpu_ratio:.3f}"
        low, high = r.interval()
        sides = f"{r.layer_label} vs {r.base_label}"
        print(
            f"{r.database:<11}{r.endpoint:<16}{sides:<17}{r.layer_median:>8.1f}"
            f"{r.base_median:>9.1f}{r.ratio:>7.3f}  {low:.3f}-{high:.3f}   {r.verdict:<8}"
            f"{statistics.median(r.round_ratios):>7.3f}{cpu:>8}"
        )
    print(
        "\nlayer: service.db.Database on bare Quart. hand: async_sessionmaker on the same engine,"
        "\nin the same app. plain: bare Quart. service: service.app.create_app(). 90% interval:"
        "\nbootstrap over the rounds; a verdict whose interval straddles the threshold is within"
        "\nthis machine's noise. paired: the median of the per-round ratios, which a drift of the"
        "\nmachine between rounds disturbs less. CPU A/B: the ratio of medians of requests per"
        "\nCPU-second of the server process."
    )
    print("\nper-round ratios of req/s (A/B):")
    for r in results:
        ratios = " ".join(f"{x:.3f}" for x in r.round_ratios)
        median = statistics.median(r.round_ratios)
        sides = f"{r.layer_label} vs {r.base_label}"
        print(f"  {r.database:<11}{r.endpoint:<16}{sides:<17}{ratios}  (median {median:.3f})")
    for r in results:
        for problem in r.problems:
            print(f"! {r.database} {r.endpoint}: {problem}")
