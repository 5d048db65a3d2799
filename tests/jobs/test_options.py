"""JobOptions: typed, versioned, and compatible with rows and clients of before."""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from meshd.db import DB_FILENAME
from meshd.jobs.engine import Engine
from meshd.jobs.model import Job, JobStatus, JobType
from meshd.jobs.options import SCHEMA_VERSION, JobOptions
from meshd.jobs.store import JobStore
from tests.jobs.conftest import Harness, all_runners
from tests.jobs.gated import GatedRunner

# The ``jobs`` table as meshd created it before options had a schema and jobs had a
# reason code: the rows below are what such a daemon wrote.
_OLD_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL,
    configuration TEXT NOT NULL, device TEXT, depends_on TEXT,
    args TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, started_at REAL,
    finished_at REAL, error TEXT, runner TEXT, reason TEXT, progress REAL
);
"""


def _old_row(job_id: str, seq: int, status: str, args: str, **kw: object) -> tuple[object, ...]:
    return (
        job_id,
        seq,
        str(kw.get("type", "compile")),
        status,
        "a.yaml",
        None,
        None,
        args,
        1.0,
        None,
        None,
        None,
        kw.get("runner"),
        kw.get("reason"),
        None,
    )


def test_only_options_off_their_default_reach_the_api() -> None:
    assert JobOptions().to_api() == {}
    assert JobOptions(force_local=True).to_api() == {"force_local": True}
    rerouted = JobOptions(reroutes=2, excluded_receivers=("fp-a", "fp-b"))
    assert rerouted.to_api() == {"reroutes": 2, "excluded_receivers": ["fp-a", "fp-b"]}
    job = Job(JobType.RENAME, "a.yaml", options=JobOptions(new_name="porch"))
    assert job.to_dict()["args"] == {"new_name": "porch"}


def test_persisted_form_carries_the_schema_and_round_trips() -> None:
    options = JobOptions(
        force_local=True, offloader="f" * 64, offloader_name="pi", remote_job="abc123def456"
    )
    stored = json.loads(options.to_json())
    assert stored == {**options.to_api(), "schema": SCHEMA_VERSION}
    assert JobOptions.from_json(options.to_json()) == options


def test_a_row_from_before_the_schema_reads_as_it_was_meant() -> None:
    legacy = {"force_local": True, "reroutes": 3, "excluded_receivers": ["fp-a", "fp-b", "fp-c"]}
    options = JobOptions.from_json(json.dumps(legacy))
    assert options.force_local and options.reroutes == 3
    assert options.excluded_receivers == ("fp-a", "fp-b", "fp-c")
    assert options.to_api() == legacy
    assert json.loads(options.to_json())["schema"] == SCHEMA_VERSION


def test_unknown_keys_are_kept_but_not_interpreted() -> None:
    newer = {"schema": SCHEMA_VERSION + 1, "compile_cache": {"key": "x"}, "force_local": True}
    options = JobOptions.from_json(json.dumps(newer))
    assert options.force_local
    assert dict(options.extra) == {"compile_cache": {"key": "x"}}
    # Written back whole, with the newer schema it came from, not downgraded to ours.
    assert json.loads(options.to_json()) == newer
    # Changing a known option keeps the unknown ones.
    assert json.loads(replace(options, reroutes=1).to_json()) == {**newer, "reroutes": 1}


def test_a_known_key_of_the_wrong_type_is_kept_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        options = JobOptions.from_json('{"force_local": "yes", "reroutes": -1, "elf": true}')
    assert not options.force_local and options.reroutes == 0 and options.elf
    assert dict(options.extra) == {"force_local": "yes", "reroutes": -1}
    assert "force_local" in caplog.text and "reroutes" in caplog.text
    assert json.loads(options.to_json()) == {
        "force_local": "yes",
        "reroutes": -1,
        "elf": True,
        "schema": SCHEMA_VERSION,
    }


@pytest.mark.parametrize(
    "text", ["not json", "[1, 2]", '"text"', "{" * 100_000, '{"a": ' + "[" * 50_000]
)
def test_unreadable_stored_options_are_kept_verbatim(text: str) -> None:
    options = JobOptions.from_json(text)
    assert options == JobOptions(extra={"unreadable": text})
    assert JobOptions.from_json(options.to_json()) == options


def test_constructing_options_with_a_wrong_type_is_an_error() -> None:
    with pytest.raises(TypeError, match="force_local"):
        JobOptions(force_local="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reroutes"):
        JobOptions(reroutes=True)
    with pytest.raises(TypeError, match="excluded_receivers"):
        JobOptions(excluded_receivers="fp-a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schema"):
        JobOptions(extra={"schema": 2})
    # Lists become tuples: the record stays immutable.
    listed = JobOptions(excluded_receivers=["fp-a"])  # type: ignore[arg-type]
    assert listed.excluded_receivers == ("fp-a",)
    with pytest.raises(TypeError):
        listed.extra["x"] = 1  # type: ignore[index]


def test_a_database_of_an_older_meshd_opens_and_its_jobs_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / DB_FILENAME)
    conn.executescript(_OLD_SCHEMA)
    conn.execute(
        "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        _old_row("00000000000a", 1, "completed", '{"force_local": true}', runner="local"),
    )
    conn.execute(
        "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        _old_row("00000000000b", 2, "queued", '{"new_name": "porch"}', type="rename"),
    )
    conn.commit()
    conn.close()

    store = JobStore(data / DB_FILENAME)
    jobs = {job.id: job for job in store.load_all()}
    assert jobs["00000000000a"].options == JobOptions(force_local=True)
    assert jobs["00000000000a"].reason_code is None
    assert jobs["00000000000b"].options.new_name == "porch"
    done = jobs["00000000000a"]
    done.reason_code = "no_mesh"
    store.save(done)
    assert store.get(done.id) == done
    store.close()


async def test_restored_old_rows_keep_their_options_through_a_run(
    tmp_path: Path, gate: GatedRunner
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / DB_FILENAME)
    conn.executescript(_OLD_SCHEMA)
    conn.execute(
        "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        _old_row("00000000000c", 1, "running", '{"new_name": "porch", "future": 1}', type="rename"),
    )
    conn.commit()
    conn.close()
    engine = Engine(data, all_runners(gate))
    harness = Harness(engine, gate)
    await engine.start()
    try:
        job = engine.get("00000000000c")
        await harness.started(job)
        assert engine.get(job.id).reason_code == "no_mesh"
        gate.release(job.id)
        await harness.status(job, JobStatus.COMPLETED)
    finally:
        await engine.stop()
    reader = JobStore(data / DB_FILENAME)
    finished = reader.get("00000000000c")
    reader.close()
    assert finished is not None and finished.status is JobStatus.COMPLETED
    assert finished.options.new_name == "porch" and dict(finished.options.extra) == {"future": 1}
    assert finished.to_dict()["args"] == {"new_name": "porch", "future": 1}
