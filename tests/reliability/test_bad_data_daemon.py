"""Bad data never stops the daemon: a real ``meshd serve`` over a hand-damaged data dir.

Corrupt bytes in the database file are refused with exit 65, a message that says how to
recover, and no traceback; bad rows, a missing column and stray store files are
quarantined or swept while the good jobs load and the daemon works.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from meshd.daemon import EXIT_BAD_DATA
from meshd.mesh.security.identity import Identity
from tests.daemon.conftest import Meshd, MeshdFactory, host_config

WAIT = 60.0  # a safety net against hangs


def _history(meshd: MeshdFactory, tmp_path: Path) -> tuple[Meshd, list[str]]:
    """A daemon that ran two compiles to completion and then stopped cleanly."""
    daemon = meshd().start()
    ids = []
    for name in ("alpha", "beta"):
        cfg = host_config(tmp_path / "cfg", name)
        ids.append(daemon.cli_json("compile", str(cfg), "--detach")["compile"])
    final = daemon.cli_json("wait", *ids)
    assert [job["status"] for job in final["jobs"]] == ["completed", "completed"]
    assert daemon.terminate() == 0, daemon.log()
    db = daemon.data_dir / "meshd.db"
    sqlite3.connect(db).close()  # the last connection checkpoints: everything is in the file
    assert (
        not (daemon.data_dir / "meshd.db-wal").exists()
        or not (daemon.data_dir / "meshd.db-wal").stat().st_size
    )
    return daemon, ids


def _exit_of(daemon: Meshd) -> int:
    daemon.start(wait=False)
    assert daemon.proc is not None
    return daemon.proc.wait(timeout=WAIT)


def _damage_a_table_page(db: Path) -> None:
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) >= 3 * page, "expected a database of several pages"
    for offset in range(page + 8, page + 600):  # the second page: a b-tree page
        data[offset] = 0xA5
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["table page", "header"])
def test_corrupt_database_is_refused_with_a_recovery_hint(
    meshd: MeshdFactory, tmp_path: Path, damage: str
) -> None:
    daemon, _ids = _history(meshd, tmp_path)
    db = daemon.data_dir / "meshd.db"
    before = db.read_bytes()
    if damage == "header":
        db.write_bytes(b"this is not SQLite" + before[18:])
    else:
        _damage_a_table_page(db)
    damaged = db.read_bytes()
    mark = len(daemon.log())
    assert _exit_of(daemon) == EXIT_BAD_DATA
    log = daemon.log()[mark:] if len(daemon.log()) > mark else daemon.log()
    assert "meshd cannot start" in log and "is corrupt" in log
    assert "To recover" in log and ".recover" in log and "backup" in log
    assert "Traceback" not in log
    assert db.read_bytes() == damaged, "the refusal must not touch the file"


def test_the_recovery_hint_works(meshd: MeshdFactory, tmp_path: Path) -> None:
    """Following the message's salvage recipe gets a daemon that starts again."""
    sqlite3_cli = shutil.which("sqlite3")
    if sqlite3_cli is None:
        pytest.skip("needs the sqlite3 command (Debian package sqlite3)")
    daemon, ids = _history(meshd, tmp_path)
    db = daemon.data_dir / "meshd.db"
    _damage_a_table_page(db)
    assert _exit_of(daemon) == EXIT_BAD_DATA
    shutil.copy(db, db.with_name("meshd.db.corrupt"))
    salvage = subprocess.run(
        [sqlite3_cli, str(db), ".recover"], capture_output=True, check=False, timeout=WAIT
    )
    if salvage.returncode != 0:  # some sqlite3 builds (Debian 12's 3.40) fail on .recover
        salvage = subprocess.run(
            [sqlite3_cli, str(db), ".dump"], capture_output=True, check=True, timeout=WAIT
        )
    dump = salvage.stdout
    recovered = db.with_name("meshd.db.recovered")
    # Rows damaged beyond the schema's constraints fail to insert (the CLI says so and
    # goes on); rows that insert but hold nonsense are meshd's to quarantine.
    subprocess.run([sqlite3_cli, str(recovered)], input=dump, check=False, timeout=WAIT)
    for leftover in ("meshd.db-wal", "meshd.db-shm"):
        (daemon.data_dir / leftover).unlink(missing_ok=True)
    recovered.replace(db)
    daemon.start()
    listed = [job["id"] for job in daemon.cli_json("jobs", "--all")["jobs"]]
    assert set(listed) <= set(ids)
    cfg = host_config(tmp_path / "cfg", "gamma")
    job = daemon.cli_json("compile", str(cfg), "--detach")["compile"]
    assert daemon.cli_json("wait", job)["jobs"][0]["status"] == "completed"


@pytest.mark.slow
def test_bad_rows_are_quarantined_and_the_daemon_works(meshd: MeshdFactory, tmp_path: Path) -> None:
    daemon, good = _history(meshd, tmp_path)
    stranger = Identity.generate()
    with sqlite3.connect(daemon.data_dir / "meshd.db", isolation_level=None) as db:
        row = "INSERT INTO jobs (id, seq, type, status, configuration, args, created_at) VALUES"
        db.execute(f"{row} ('badtype', 90, 'teleport', 'queued', '/x.yaml', '{{}}', 1.0)")
        db.execute(f"{row} ('badstat', 91, 'compile', 'melted', '/x.yaml', '{{}}', 1.0)")
        db.execute(f"{row} ('badjson', 92, 'compile', 'queued', '/x.yaml', '{{oops', 1.0)")
        db.execute("ALTER TABLE jobs DROP COLUMN reason")  # a missing column
        db.execute(
            "INSERT INTO trust_peers (fingerprint, public_key, name, addresses, may_send_work,"
            " may_build_for_me, added_at, updated_at) VALUES (?, ?, 'bad', '[]', 'false',"
            " 'false', 1.0, 1.0)",
            (stranger.fingerprint.hex(), stranger.public_key),
        )
    cas = daemon.data_dir / "mesh" / "cas"
    (cas / "stray.txt").write_text("not a blob")

    daemon.start()
    listed = daemon.cli_json("jobs", "--all")["jobs"]
    assert [job["id"] for job in listed] == good
    assert all(job["status"] == "completed" for job in listed)
    assert daemon.cli("jobs").returncode == 0  # the table view too
    assert daemon.cli_json("trusted")["trusted"] == []  # 'false' granted nothing
    log = daemon.log()
    for job_id in ("badtype", "badstat", "badjson"):
        assert f"job {job_id} cannot be read" in log
    assert "trust_quarantine" in log and "no reason column" in log
    assert not (cas / "stray.txt").exists()
    assert "Traceback" not in log
    # And it still does its job.
    cfg = host_config(tmp_path / "cfg", "gamma")
    job = daemon.cli_json("compile", str(cfg), "--detach")["compile"]
    assert daemon.cli_json("wait", job)["jobs"][0]["status"] == "completed"
    assert daemon.terminate() == 0
    with sqlite3.connect(daemon.data_dir / "meshd.db") as db:
        quarantined = {r[0] for r in db.execute("SELECT job_id FROM jobs_quarantine")}
        trust_q = db.execute("SELECT COUNT(*) FROM trust_quarantine").fetchone()[0]
    assert quarantined == {"badtype", "badstat", "badjson"} and trust_q == 1
