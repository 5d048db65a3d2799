"""The benchmark's scenarios, numbered as in issue 17, each in its own module.

A scenario is an ``async def run(bench, result)`` that adds figures to ``result`` as
it measures them (an error later keeps them), plus the figure keys it always
reports (the ``--quick`` smoke test checks those keys, so a scenario cannot silently
stop measuring something). Scenarios that need features not merged yet are listed
as *pending* with the figures they will report, and appear so in the table and JSON.

Adding one: write ``tests/bench/scenarios/<name>.py`` with a ``SCENARIO`` of its own
and replace its pending entry below with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tests.bench.harness import Bench, Result


@dataclass(frozen=True)
class Scenario:
    number: int
    name: str
    title: str
    keys: tuple[str, ...]
    """Figure keys every run reports (full and ``--quick``)."""
    run: Callable[[Bench, Result], Awaitable[None]] | None = None
    pending: str = ""
    """Why it does not run yet (the feature it waits for); empty once it runs."""

    @property
    def ident(self) -> str:
        return f"{self.number}-{self.name}"


def all_scenarios() -> list[Scenario]:
    """Every scenario in issue order; imported lazily so ``--list`` stays cheap."""
    from tests.bench.scenarios import (
        compile_cache,
        fleet_update,
        footprint,
        link_discovery,
        mesh_scaling,
        pipelining,
        remote_overhead,
        simulated_mesh,
    )

    return [
        pipelining.SCENARIO,
        mesh_scaling.SCENARIO,
        fleet_update.SCENARIO,
        remote_overhead.SCENARIO,
        compile_cache.SCENARIO,
        link_discovery.SCENARIO,
        footprint.SCENARIO,
        simulated_mesh.SCENARIO,
    ]


def select(scenarios: list[Scenario], wanted: list[str] | None) -> list[Scenario]:
    """``--only``: by number (``1``), name (``pipelining``) or both (``1-pipelining``)."""
    if not wanted:
        return scenarios
    chosen = []
    for item in wanted:
        matches = [s for s in scenarios if item in (str(s.number), s.name, s.ident)]
        if not matches:
            known = ", ".join(s.ident for s in scenarios)
            raise SystemExit(f"unknown scenario {item!r} (known: {known})")
        chosen.extend(m for m in matches if m not in chosen)
    return sorted(chosen, key=lambda s: s.number)
