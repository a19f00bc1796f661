"""The five-stack table of ``bench/stacks.py``: figures, ratios and issue 21's targets."""

from __future__ import annotations

from bench.harness import Plan, Rotation, markdown_table, write_results

__all__ = ["report"]

LAYER = "layer"
CONTROL = "layer A/A"
ROWS = [
    ("PostgreSQL", "read"),
    ("PostgreSQL", "write"),
    ("SQLite", "read"),
    ("SQLite", "write"),
    ("none", "nodb"),
]


def _row_name(database: str, route: str) -> str:
    return "no database" if route == "nodb" else f"{database} {route}"


def _figures(rotations: dict[tuple[str, str], Rotation], labels: list[str]) -> str:
    rows = []
    for key in ROWS:
        rotation = rotations.get(key)
        if rotation is None:
            continue
        cells = [
            f"{rotation.rate(label):,.0f} ({rotation.p99(label):,.0f})"
            if label in rotation.bursts
            else "-"
            for label in labels
        ]
        rows.append([_row_name(*key), *cells])
    return markdown_table(["req/s (p99 ms)", *labels], rows)


def _ratios(rotations: dict[tuple[str, str], Rotation], labels: list[str]) -> str:
    others = [label for label in labels if label != LAYER]
    rows = []
    for key in ROWS:
        rotation = rotations.get(key)
        if rotation is None:
            continue
        cells = [
            f"{rotation.ratio(LAYER, other):.2f}x ({rotation.noise(LAYER, other)})"
            if other in rotation.bursts
            else "-"
            for other in others
        ]
        rows.append([_row_name(*key), *cells])
    return markdown_table(["layer / ...", *others], rows)


def _targets(rotations: dict[tuple[str, str], Rotation]) -> str:
    """Issue 21's goal, target by target, against this run's figures."""
    rows: list[list[object]] = []

    def check(what: str, key: tuple[str, str], other: str, wanted: float, p99: float = 0) -> None:
        rotation = rotations.get(key)
        if rotation is None or other not in rotation.bursts or LAYER not in rotation.bursts:
            return
        ratio = rotation.ratio(LAYER, other)
        measured = f"{ratio:.2f}x"
        met = ratio >= wanted
        if p99:
            measured += f", p99 {rotation.p99(LAYER):,.0f} ms"
            met = met and rotation.p99(LAYER) <= p99
        rows.append([f"{_row_name(*key)}: {what}", measured, "met" if met else "**not met**"])

    for key in ROWS:
        check("layer >= 1.0x hand-written", key, "hand-written", 1.0)
    for key in ROWS[:4]:
        check("layer >= 1.25x Django", key, "Django", 1.25)
        check("layer >= 1.25x FastAPI + AA", key, "FastAPI + AA", 1.25)
    check("layer >= 70% of the ceiling, p99 <= 150 ms", ROWS[3], "ceiling", 0.70, p99=150)
    for key in ROWS[:2]:
        check("layer >= 40% of the ceiling", key, "ceiling", 0.40)
    return markdown_table(["target (issue 21)", "measured", "verdict"], rows, left=1)


def report(
    rotations: dict[tuple[str, str], Rotation],
    labels: list[str],
    plan: Plan,
    skipped: list[str],
) -> None:
    sections = [
        "Requests per second and p99 latency (ms), medians over the rounds:",
        _figures(rotations, labels),
        "The layer's req/s over each other stack's (ratio of the medians), and in brackets the "
        f"range of the per-round ratios. **{CONTROL}** is a second, identical layer server in "
        "the same rotation: its column is this run's noise.",
        _ratios(rotations, labels),
        _targets(rotations),
    ]
    problems = [problem for rotation in rotations.values() for problem in rotation.problems]
    if problems or skipped:
        lines = [f"- {p}" for p in problems] + [f"- skipped: {s}" for s in skipped]
        sections += [
            "Problems (a figure with failures behind it is not a result):",
            "\n".join(lines),
        ]
    how = (
        "Five stacks with the same endpoints, each one server process on a database of its "
        "own, all up at once; `wrk -t1 -c32` bursts rotating between them, the order reversed "
        f"every other round: {plan}. What each stack does: `bench/stacks.py` and "
        "`bench/stack_apps/`."
    )
    write_results(
        "stacks",
        how,
        "\n\n".join(sections),
        quick=plan.quick,
    )
