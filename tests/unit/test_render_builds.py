"""``meshd show`` and ``meshd devices`` say what built a job and what was flashed.

Inputs are the API's JSON shapes (docs/API.md: a job's ``build``, a device row's
``last_flash``), rendered by rich's own recording console at 80 and 200 columns.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console, RenderableType

from meshd.cli.fleet import _devices_table
from meshd.cli.render import built_line, job_table

RECEIVER = "ab12" + "7e" * 30
OFFLOADER = "9f3a" + "51" * 30


def render(renderable: RenderableType, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system="truecolor")
    console.print(renderable)
    return console.export_text(styles=False)


def remote_build(**fields: Any) -> dict[str, Any]:
    build: dict[str, Any] = {
        "esphome_version": "2026.6.5",
        "where": "remote",
        "builder": "desktop",
        "builder_fingerprint": RECEIVER,
        "platform": "HOST",
        "verified": True,
        "provenance": {
            "verified": True,
            "receiver": RECEIVER,
            "offloader": OFFLOADER,
            "job_id": "3f9c0a1b2d4e",
            "bundle": "01ab" * 16,
            "esphome_version": "2026.6.5",
            "platform": "HOST",
            "artifacts": [
                {"path": ".esphome/build/kitchen/program", "role": "app", "sha256": "aa" * 32},
                {
                    "path": ".esphome/storage/kitchen.yaml.json",
                    "role": "storage",
                    "sha256": "bb" * 32,
                },
            ],
            "signed_at": 1764633600.0,
            "record": "89" * 80,
            "signature": "11" * 64,
            "receiver_key": "22" * 32,
        },
    }
    build.update(fields)
    return build


def job(build: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "3f9c0a1b2d4e",
        "type": "compile",
        "status": "completed",
        "configuration": "/home/me/esphome/kitchen.yaml",
        "lane": "compile",
        "created_at": 1764633500.0,
        "finished_at": 1764633601.0,
        "runner": RECEIVER,
        "args": {},
        "build": build,
    }
    data.update(fields)
    return data


def test_a_verified_remote_build_says_who_with_what_and_that_the_signature_checked() -> None:
    assert built_line(remote_build()).plain == (
        "built by desktop (ab12…) with esphome 2026.6.5 on host; provenance signature verified"
    )


@pytest.mark.parametrize("width", [80, 200])
def test_show_prints_the_build_and_its_provenance(width: int) -> None:
    text = render(job_table(job(remote_build())), width)
    squeezed = re.sub(r"\s+", " ", text)
    assert "Built built by desktop (ab12…) with esphome 2026.6.5 on host;" in squeezed
    assert "provenance signature verified" in squeezed
    assert "Provenance signed " in squeezed
    assert "for job 3f9c0a1b2d4e, bundle 01ab01ab01ab01ab…, 2 artifact digests" in squeezed


def test_a_local_build_and_an_unsigned_remote_one() -> None:
    local = {
        "esphome_version": "2026.5.2",
        "where": "local",
        "builder": "local",
        "builder_fingerprint": None,
        "platform": "ESP32S3",
        "verified": None,
        "provenance": None,
    }
    assert built_line(local).plain == "built locally with esphome 2026.5.2 on esp32s3"
    unsigned = remote_build(esphome_version=None, platform=None, verified=None, provenance=None)
    assert built_line(unsigned).plain == (
        "built by desktop (ab12…) with an esphome that did not say its version; "
        "no signed provenance (the receiver signs none)"
    )
    text = render(job_table(job(local)), 200)
    assert "Provenance" not in text
    assert "built locally with esphome 2026.5.2" in text


def test_no_build_record_prints_no_build_line() -> None:
    text = render(job_table(job(None, type="clean")), 200)
    assert "Built" not in text


def test_an_unreadable_record_is_shown_as_such() -> None:
    marker = {"unreadable": True, "error": "not JSON (Expecting value)", "raw": "{nope"}
    assert built_line(marker).plain == "unreadable build record: not JSON (Expecting value)"
    assert "unreadable build record" in render(job_table(job(marker)), 200)


def test_a_hostile_receiver_name_reaches_the_terminal_cleaned() -> None:
    line = built_line(remote_build(builder="evil\x1b[2J[red]x[/red]"))
    assert "\x1b" not in line.plain
    assert "[red]x[/red]" in line.plain  # shown as text, not taken as markup


def _device_row(last_flash: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "configuration": "/home/me/esphome/kitchen.yaml",
        "name": "kitchen",
        "address": "192.168.1.40",
        "online": True,
        "running_version": "2026.6.5",
        "running_config_hash": "1a2b3c4d",
        "current_config_hash": "1a2b3c4d",
        "last_build_config_hash": "1a2b3c4d",
        "last_build_esphome_version": "2026.6.5",
        "state": "up-to-date",
        "reasons": ["runs config hash 1a2b3c4d"],
        "needs_update": False,
        "last_flash": last_flash,
        "device": None,
    }


def test_devices_shows_the_esphome_of_the_last_flashed_build_next_to_the_running_one() -> None:
    rows = [
        _device_row(
            {
                "upload_job": "a1b2c3d4e5f6",
                "esphome_version": "2026.6.5",
                "builder": "desktop",
                "verified": True,
            }
        ),
        _device_row(
            {
                "upload_job": "b1b2c3d4e5f6",
                "esphome_version": "2026.5.2",
                "builder": "local",
                "verified": None,
            }
        )
        | {"name": "porch"},
        _device_row(None) | {"name": "attic"},
        _device_row(
            {"upload_job": "c1", "esphome_version": None, "builder": None, "verified": None}
        )
        | {"name": "shed"},
    ]
    lines = render(_devices_table(rows), 200).splitlines()
    header = lines[0].split()
    assert header[header.index("running") + 1] == "flashed"
    by_name = {line.split()[1]: line for line in lines[1:]}
    assert re.search(r"2026\.6\.5 +2026\.6\.5 by desktop ✓ +1a2b3c4d", by_name["kitchen"])
    assert re.search(r"2026\.6\.5 +2026\.5\.2 +1a2b3c4d", by_name["porch"])
    assert re.search(r"2026\.6\.5 +— +1a2b3c4d", by_name["attic"])
    assert re.search(r"2026\.6\.5 +\? +1a2b3c4d", by_name["shed"])
