"""Job history that does not grow forever: limits, and the prune that applies them.

A fleet update of 100 devices makes 200 jobs, and every job has a log file; a node
that updates weekly would hold years of rows. Terminal jobs past a cap (the newest
``keep``, and none older than ``max_age``) are deleted with their logs, at start and
then every ``interval``. A terminal job an active one depends on is kept whatever its
age (an armed upload may wait days for a device after its compile completed), because
restore cancels a dependent whose prerequisite is missing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from meshd.jobs.logs import JobLogs
from meshd.jobs.model import now
from meshd.jobs.store import JobStore

_LOGGER = logging.getLogger(__name__)

DEFAULT_HISTORY_KEEP = 1000
DEFAULT_HISTORY_MAX_AGE = 30 * 24 * 3600.0
# Often enough that a busy node never holds much more than its cap; rarely enough that
# the query costs nothing.
DEFAULT_PRUNE_INTERVAL = 3600.0
# Rows deleted per transaction: short write locks, so an API request never waits long.
PRUNE_BATCH = 500


@dataclass(frozen=True)
class HistoryLimits:
    keep: int = DEFAULT_HISTORY_KEEP
    """Terminal jobs kept at most (the newest by submission order)."""
    max_age: float = DEFAULT_HISTORY_MAX_AGE
    """Seconds after which a terminal job is deleted, whatever the count."""
    interval: float = DEFAULT_PRUNE_INTERVAL
    """Seconds between two prunes while the daemon runs."""

    def __post_init__(self) -> None:
        if self.keep < 0 or self.max_age <= 0 or self.interval <= 0:
            raise ValueError(f"invalid history limits: {self}")


async def prune_history(
    store: JobStore, logs: JobLogs, limits: HistoryLimits, *, active: frozenset[str]
) -> list[str]:
    """Delete terminal jobs past ``limits`` and their log files; return their ids.

    ``active`` are the ids the engine holds in memory: never deleted, even if a row
    said otherwise.
    """
    removed: list[str] = []
    while True:
        batch = store.prunable(
            keep=limits.keep, finished_before=now() - limits.max_age, limit=PRUNE_BATCH
        )
        batch = [job_id for job_id in batch if job_id not in active]
        if not batch:
            break
        # Files first: a crash in between leaves rows whose logs are gone (pruned again
        # next time), never log files no row names (which nothing would ever delete).
        for job_id in batch:
            logs.close(job_id)
        await asyncio.to_thread(logs.delete_files, batch)
        store.delete(batch)
        removed.extend(batch)
        if len(batch) < PRUNE_BATCH:
            break
    if removed:
        _LOGGER.info("pruned %d finished jobs and their logs", len(removed))
    return removed
