"""Servers measured in turn: short wrk bursts rotating between them, medians of the rounds.

Rules of measurement: wall clock, compared as ratios within one run. Every
server is up at once and loaded in turn by short bursts; each round visits them
all, the order reversed every other round, so that a drift of the (shared,
noisy) machine weighs on each alike. The medians of the rounds are compared;
the range of the per-round ratios is the run's noise, and an A/A pair (the same
server twice) shows it directly.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness.servers import Server
from bench.harness.wrk import CONNECTIONS, Burst, burst

__all__ = ["Plan", "Rotation", "Target", "add_plan_options", "plan_from", "rotate"]


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: int
    warmup_seconds: int
    quick: bool = False

    def __str__(self) -> str:
        return (
            f"{self.rounds} rounds of {self.seconds} s bursts after a {self.warmup_seconds} s "
            "warm-up"
        )


def add_plan_options(parser: argparse.ArgumentParser, full: Plan, quick: Plan) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{quick.rounds} rounds of {quick.seconds} s ({full.rounds} of {full.seconds} s)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per measurement")
    parser.add_argument("--seconds", type=int, help="seconds per burst")


def plan_from(args: argparse.Namespace, full: Plan, quick: Plan) -> Plan:
    plan = quick if args.quick else full
    return Plan(
        args.rounds or plan.rounds, args.seconds or plan.seconds, plan.warmup_seconds, args.quick
    )


@dataclass(frozen=True)
class Target:
    """What one server is loaded with: wrk's script and arguments, on a path."""

    label: str
    server: Server
    path: str
    script: Path
    args: tuple[str, ...] = ()
    connections: int = CONNECTIONS

    def burst(self, seconds: int) -> Burst:
        return burst(
            self.server,
            self.path,
            seconds,
            self.script,
            self.args,
            connections=self.connections,
        )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


@dataclass
class Rotation:
    """The bursts of each target, in round order."""

    title: str
    bursts: dict[str, list[Burst]] = field(default_factory=dict)

    def rate(self, label: str) -> float:
        """Median req/s over the rounds."""
        return _median([b.rate for b in self.bursts[label]])

    def p50(self, label: str) -> float:
        return _median([b.p50_ms for b in self.bursts[label]])

    def p99(self, label: str) -> float:
        return _median([b.p99_ms for b in self.bursts[label]])

    def cpu_rate(self, label: str) -> float | None:
        """Median requests per CPU-second of the server, if every round measured it."""
        rates = [b.cpu_rate for b in self.bursts[label]]
        return _median([r for r in rates if r is not None]) if None not in rates else None

    def ratio(self, a: str, b: str) -> float:
        """Median req/s of ``a`` over median req/s of ``b``."""
        base = self.rate(b)
        return self.rate(a) / base if base else 0.0

    def round_ratios(self, a: str, b: str) -> list[float]:
        pairs = zip(self.bursts[a], self.bursts[b], strict=True)
        return [x.rate / y.rate if y.rate else 0.0 for x, y in pairs]

    def noise(self, a: str, b: str) -> str:
        """The range of the per-round ratios of ``a`` to ``b``."""
        ratios = self.round_ratios(a, b)
        return f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "n/a"

    def failures(self, label: str) -> tuple[int, int, int]:
        """Over the rounds: non-2xx answers, socket errors, "database is locked" in the log."""
        bursts = self.bursts[label]
        return (
            sum(b.non_2xx for b in bursts),
            sum(b.socket_errors for b in bursts),
            sum(b.locked for b in bursts),
        )

    @property
    def problems(self) -> list[str]:
        found = []
        for label, bursts in self.bursts.items():
            found += [f"{self.title}, {label}: {b.problem}" for b in bursts if b.problem]
            non_2xx, errors, locked = self.failures(label)
            if non_2xx or errors or locked:
                found.append(
                    f"{self.title}, {label}: {non_2xx} non-2xx answers, {errors} socket errors, "
                    f'{locked} "database is locked" in its log'
                )
        return found


def rotate(title: str, targets: list[Target], plan: Plan) -> Rotation:
    """A warm-up burst each, then ``plan.rounds`` rounds visiting every target in turn."""
    labels = [t.label for t in targets]
    rotation = Rotation(title, {label: [] for label in labels})
    width = max(9, *(len(label) + 1 for label in labels))
    print(f"\n{title}: wrk -t1 -c{targets[0].connections}, req/s (p99 ms)", flush=True)
    print(f"{'':10}" + "".join(f"{label:>{width + 9}}" for label in labels))
    for target in targets:
        target.burst(plan.warmup_seconds)
    for index in range(plan.rounds):
        order = targets if index % 2 == 0 else targets[::-1]
        for target in order:
            rotation.bursts[target.label].append(target.burst(plan.seconds))
        last = [rotation.bursts[label][-1] for label in labels]
        line = "".join(f"{b.rate:>{width}.1f} ({b.p99_ms:>5.0f})" for b in last)
        print(f"  round {index + 1}:{line}", flush=True)
    for problem in rotation.problems:
        print(f"  ! {problem}", flush=True)
    return rotation
