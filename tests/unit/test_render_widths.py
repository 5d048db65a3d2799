"""The CLI's tables at 60, 80 and 200 columns: nothing wider than the terminal, no id
or column title split across lines, long text cut in tables and whole in ``meshd show``.

The inputs are the API's JSON shapes as docs/API.md documents them (a remote compile,
an armed upload, a failure with esphome's long multi-line error, a peer that does not
trust us yet), rendered by rich's own ``Console(width=N, record=True)``.
"""

from __future__ import annotations

import io
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console, RenderableType

from meshd.cli.render import (
    JOB_COLUMNS,
    LANE_COLUMNS,
    NARROW,
    NARROW_JOB_COLUMNS,
    PEER_COLUMNS,
    TRUSTED_COLUMNS,
    Col,
    job_table,
    jobs_table,
    lanes_table,
    peers_table,
    status_tables,
    trusted_table,
    warning_lines,
)

WIDTHS = (60, 80, 200)
NOW = time.time()
RECEIVER = "c4d1" + "7e" * 30

LONG_ERROR = (
    "Failed config\n\n"
    "sensor.dht: [platform] is an invalid option for [sensor.dht]. Please check the "
    "indentation of the component and whether it is spelled right; did you mean [pin]?\n"
    "  platform: dht\n  pin: GPIO4\n"
    "  model: DHT22_THAT_DOES_NOT_EXIST_AND_IS_VERY_LONG_INDEED_WITHOUT_ANY_SPACES_IN_IT\n"
)


def _job(**fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": "3f9c0a1b2d4e",
        "type": "compile",
        "status": "running",
        "configuration": "/home/me/esphome/living-room.yaml",
        "device": None,
        "depends_on": None,
        "lane": "compile",
        "created_at": NOW - 90,
        "started_at": NOW - 80,
        "finished_at": None,
        "error": None,
        "runner": "local",
        "reason": "local compile lane",
        "reason_code": "no_mesh",
        "progress": 0.42,
        "args": {},
        "seq": 41,
        "waiting": None,
        "waiting_since": None,
        "waiting_until": None,
    }
    job.update(fields)
    return job


JOBS = [
    _job(),
    _job(
        id="77aa01b2c3d4",
        runner=RECEIVER,
        reason="receiver desktop has been idle the longest of 2 idle",
        reason_code="idle_receiver",
        configuration="/srv/esphome/configs/upstairs/bedroom-ceiling-light-with-a-long-name.yaml",
    ),
    _job(
        id="a1b2c3d4e5f6",
        type="upload",
        status="queued",
        lane="upload",
        device="bedroom-ceiling-light-with-a-long-name.local",
        depends_on="77aa01b2c3d4",
        progress=None,
        waiting="device",
        waiting_since=NOW - 30,
        waiting_until=NOW + 3600,
        args={"when_online": True, "device_name": "bedroom-ceiling-light-with-a-long-name"},
    ),
    _job(
        id="0d9e8f7a6b5c",
        status="failed",
        progress=None,
        finished_at=NOW - 5,
        error=LONG_ERROR,
        configuration="/home/me/esphome/garage.yaml",
    ),
    _job(
        id="ffee00112233",
        type="reset_build_env",
        status="completed",
        progress=None,
        configuration="/home/me/esphome",
        created_at=NOW - 86400 * 3,
    ),
]

STATUS: dict[str, Any] = {
    "node": {
        "name": "pi-garage",
        "fingerprint": "9f3a51c2d07e4b11" + "ab" * 24,
        "fingerprint_display": "9f3a 51c2 d07e 4b11 abab abab abab abab",
        "short": "9f3a51c2d07e4b11",
        "peer_port": 6056,
        "receiver": False,
        "offload": True,
        "version_policy": "release",
        "include_local": True,
        "pairing_open": False,
        "esphome_version": None,
        "esphome": None,
        "warnings": [
            "esphome not found (not beside /opt/meshd/bin/python, not on PATH): "
            "install it with /opt/meshd/bin/pip install esphome, or pass --esphome"
        ],
        "version": "0.1.0",
        "data_dir": "/var/lib/meshd/a/data/directory/deep/down/in/the/file/system/of/a/nas",
    },
    "lanes": {
        "compile": {
            "idle": False,
            "running": ["3f9c0a1b2d4e", "77aa01b2c3d4"],
            "remote": ["77aa01b2c3d4"],
            "queued": 1,
            "idle_since": None,
            "slots": 1,
            "waiting": 0,
        },
        "upload": {
            "idle": True,
            "running": [],
            "remote": [],
            "queued": 0,
            "idle_since": NOW - 100,
            "slots": 4,
            "waiting": 2,
        },
    },
    "peers": [
        {
            "fingerprint": RECEIVER,
            "name": "desktop",
            "addresses": ["192.168.1.20:6056"],
            "sources": ["mdns"],
            "trusted": True,
            "connected": True,
            "protocol": 1,
            "esphome_version": "2026.6.5",
            "accepts_builds": True,
            "idle": False,
            "idle_since": None,
            "running": 1,
            "queued": 0,
            "lane_via": "link",
            "last_seen": NOW - 2,
            "last_error": None,
        },
        {
            "fingerprint": "0123abcd" * 8,
            "name": "nas-in-the-basement-next-to-the-boiler",
            "addresses": ["[fd00:1234:5678::42]:6056"],
            "sources": ["static"],
            "trusted": False,
            "connected": False,
            "protocol": 1,
            "esphome_version": None,
            "accepts_builds": False,
            "idle": False,
            "running": 0,
            "queued": 0,
            "last_seen": None,
            "last_error": "it does not trust this node yet (there: meshd trust "
            "9f3a 51c2 d07e 4b11 abab abab abab abab --address pi-garage:6056)",
        },
    ],
}

TRUSTED = [
    {
        "fingerprint": RECEIVER,
        "name": "desktop",
        "may_send_work": True,
        "may_build_for_me": True,
        "addresses": ["192.168.1.20:6056", "[fd00::20]:6056"],
    }
]


def render(renderable: RenderableType, width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO(), color_system="truecolor")
    console.print(renderable)
    lines = [line.rstrip() for line in console.export_text(styles=False).splitlines()]
    for line in lines:
        assert cell_len(line) <= width, f"{cell_len(line)} > {width}: {line!r}"
    return lines


def assert_header(lines: list[str], columns: tuple[Col, ...]) -> list[str]:
    """The first line holds whole column titles, in order, and no others."""
    titles = re.split(r" {2,}", lines[0].strip())
    known = [col.title for col in columns]
    assert titles == [t for t in known if t in titles], lines[0]
    # Mandatory columns (never dropped) are always there.
    assert {col.title for col in columns if col.drop is None} <= set(titles)
    return titles


def whole_on_one_line(lines: list[str], token: str) -> bool:
    return any(token in line for line in lines)


@pytest.mark.parametrize("width", WIDTHS)
def test_jobs_table_fits(width: int) -> None:
    lines = render(jobs_table(JOBS, width), width)
    titles = assert_header(lines, JOB_COLUMNS if width >= NARROW else NARROW_JOB_COLUMNS)
    assert len(lines) == 1 + len(JOBS), "one line per job: nothing wrapped"
    for job in JOBS:
        assert whole_on_one_line(lines, job["id"]), job["id"]
    # The error is cut to its first line in a table, with an ellipsis where it is cut.
    failed = next(line for line in lines if "0d9e8f7a6b5c" in line)
    if "NOTE" in titles:
        assert "Failed config" in failed
        assert "sensor.dht" not in failed
    if width == 200:
        assert titles == [col.title for col in JOB_COLUMNS]
        assert whole_on_one_line(lines, RECEIVER[:16])
        assert whole_on_one_line(lines, "waiting for device bedroom-ceiling")
    if width < 80:
        assert len(titles) < len(JOB_COLUMNS), "a narrow terminal drops columns"
    if width < NARROW:
        # type, configuration and device in one column, and still room for why it failed
        assert titles == ["ID", "STATUS", "JOB", "NOTE"]
        assert whole_on_one_line(lines, "0d9e8f7a6b5c  failed     compile garage")
        assert "Failed config" in failed


def test_long_free_text_is_cut_with_an_ellipsis() -> None:
    lines = render(jobs_table(JOBS, 80), 80)
    assert any("…" in line for line in lines)
    assert not whole_on_one_line(lines, "bedroom-ceiling-light-with-a-long-name.yaml")


@pytest.mark.parametrize("width", WIDTHS)
def test_show_prints_the_whole_error(width: int) -> None:
    lines = render(job_table(JOBS[3]), width)
    text = "".join(line.strip() for line in lines)
    for piece in LONG_ERROR.split():
        assert piece in text.replace(" ", "") or piece in text
    squeezed = re.sub(r"\s+", "", "".join(lines))
    assert re.sub(r"\s+", "", LONG_ERROR) in squeezed
    assert any(line.startswith("ID") and "0d9e8f7a6b5c" in line for line in lines)


@pytest.mark.parametrize("width", WIDTHS)
def test_status_uses_human_labels(width: int) -> None:
    out: list[str] = []
    for table in status_tables(STATUS, width):
        out += render(table, width)
    text = "\n".join(out)
    for internal in ("fingerprint_display", "short", "pairing_open", "include_local", "data_dir"):
        assert internal not in text
    assert re.search(r"^Fingerprint +9f3a 51c2", text, re.MULTILINE)
    assert re.search(r"^Pairing window +closed$", text, re.MULTILINE)
    assert re.search(r"^ESPHome +not found$", text, re.MULTILINE)
    lanes = out.index("Lanes")
    assert_header(out[lanes + 1 :], LANE_COLUMNS)
    peers = out.index("Peers")
    assert_header(out[peers + 1 :], PEER_COLUMNS)
    assert len(out) - peers == 1 + 1 + 2, "one line per peer"
    for running in STATUS["lanes"]["compile"]["running"]:
        if width >= 80:
            assert whole_on_one_line(out, running)
    (warning,) = warning_lines(STATUS["node"])
    assert warning.plain.startswith("warning: esphome not found")


@pytest.mark.parametrize("width", WIDTHS)
def test_peer_and_trust_tables_fit(width: int) -> None:
    lines = render(peers_table(STATUS["peers"], width), width)
    assert lines[0] == "Peers"
    titles = assert_header(lines[1:], PEER_COLUMNS)
    assert len(lines) == 2 + len(STATUS["peers"])
    if "FINGERPRINT" in titles:
        assert whole_on_one_line(lines, RECEIVER[:16])
    trusted = render(trusted_table(TRUSTED, width), width)
    assert_header(trusted, TRUSTED_COLUMNS)
    assert whole_on_one_line(trusted, RECEIVER[:16])
    assert len(trusted) == 2


def test_lanes_without_peers_and_an_empty_peer_list() -> None:
    lines = render(lanes_table(STATUS["lanes"], 60), 60)
    assert len(lines) == 4
    assert render(peers_table([], 60), 60) == ["Peers", "PEERS", "none"]


ESC = "\x1b"


def test_peer_text_is_cleaned_in_every_table() -> None:
    """A hostile receiver's name, reason, error and link error reach no terminal raw."""
    hostile = f"evil{ESC}]52;c;cm0gLXJmIH4K\x07{ESC}[2J\u202e[link=http://x/]y[/link]"
    peer = {**STATUS["peers"][0], "name": hostile, "last_error": hostile, "connected": False}
    job = _job(reason=hostile, error=hostile, status="failed", runner=hostile)
    trusted = {**TRUSTED[0], "name": hostile, "addresses": [hostile]}
    renderables = [
        peers_table([peer], 200),
        jobs_table([job], 200),
        job_table(job),
        trusted_table([trusted], 200),
        *warning_lines({"warnings": [hostile]}),
    ]
    for renderable in renderables:
        console = Console(width=200, record=True, file=io.StringIO(), color_system="truecolor")
        console.print(renderable)
        raw = console.export_text(styles=True, clear=False)
        assert "]52;" not in raw and "[2J" not in raw and "\u202e" not in raw
        # rich markup in the name is shown as text, never interpreted
        assert "[link=http://x/]" in console.export_text(styles=False)


_word = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(min_value=56, max_value=220),
    rows=st.lists(
        st.tuples(
            st.from_regex(r"[0-9a-f]{12}", fullmatch=True),
            st.lists(_word, min_size=0, max_size=12).map(" ".join),
            st.lists(_word, min_size=0, max_size=12).map(" ".join),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_any_jobs_fit_with_whole_ids(width: int, rows: list[tuple[str, str, str]]) -> None:
    """Whatever the paths, devices and errors, a jobs table fits and keeps its ids."""
    jobs = [
        _job(id=job_id, configuration=f"/x/{path}.yaml", device=device or None, error=path)
        for job_id, path, device in rows
    ]
    lines = render(jobs_table(jobs, width), width)
    assert_header(lines, JOB_COLUMNS if width >= NARROW else NARROW_JOB_COLUMNS)
    assert len(lines) == 1 + len(jobs)
    for job, line in zip(jobs, lines[1:], strict=True):
        assert line.startswith(job["id"] + "  ")
