"""Strict validation of the fleet fields of job requests (no daemon needed: pure checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshd.api.validation import ApiError, parse_installs_request, parse_job_request


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "kitchen.yaml"
    path.write_text("esphome:\n  name: kitchen\nesp32:\n  board: x\n")
    return path


NAME = "device_name"


def _error(parse: Any, body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(body)
    assert caught.value.status == 400
    return caught.value


def test_armed_install_and_upload_options(config: Path) -> None:
    install = parse_job_request(
        {"type": "install", "configuration": str(config), "when_online": True}
    )
    assert install.device is None
    assert install.upload_options.when_online and install.upload_options.device_name is None
    assert not install.options.when_online  # the compile does not wait for anything
    upload = parse_job_request(
        {
            "type": "upload",
            "configuration": str(config),
            "when_online": True,
            "device_name": "kitchen",
            "build": "0123456789ab",
        }
    )
    assert (upload.options.when_online, upload.options.device_name) == (True, "kitchen")
    assert upload.options.build == "0123456789ab"


@pytest.mark.parametrize(
    ("extra", "code", "field"),
    [
        ({"type": "install", "when_online": "yes"}, "invalid_field", "when_online"),
        ({"type": "compile", "when_online": True}, "invalid_field", "when_online"),
        (
            {"type": "install", "device": "d", "device_name": "kitchen"},
            "invalid_field",
            "device_name",
        ),
        (
            {"type": "install", "when_online": True, "device_name": "../x"},
            "invalid_name",
            "device_name",
        ),
        ({"type": "install", "device": "d", "build": "0123456789ab"}, "invalid_field", "build"),
        ({"type": "upload", "device": "d", "build": "../../etc"}, "invalid_field", "build"),
        ({"type": "upload", "device": "d", "build": 12}, "invalid_field", "build"),
        ({"type": "upload", "when_online": False}, "missing_device", "device"),
    ],
)
def test_bad_fleet_fields(config: Path, extra: dict[str, Any], code: str, field: str) -> None:
    error = _error(parse_job_request, {"configuration": str(config), **extra})
    assert (error.code, error.details.get("field")) == (code, field)


def test_installs_defaults_overrides_and_entry_errors(config: Path, tmp_path: Path) -> None:
    other = tmp_path / "porch.yaml"
    other.write_text("esphome:\n  name: porch\nesp32:\n  board: x\n")
    requests = parse_installs_request(
        {
            "installs": [
                {"configuration": "kitchen.yaml"},
                {
                    "configuration": str(other),
                    "device": "10.0.0.2",
                    "when_online": False,
                    "local": True,
                },
            ],
            "cwd": str(tmp_path),
            "when_online": True,
        }
    )
    assert [r.configuration for r in requests] == [str(config), str(other)]
    assert [r.upload_options.when_online for r in requests] == [True, False]
    assert [r.options.force_local for r in requests] == [False, True]

    for body, code in [
        ({"installs": "kitchen.yaml"}, "missing_field"),
        ({"installs": [{"configuration": str(config), "type": "compile"}]}, "unknown_field"),
        ({"installs": ["kitchen.yaml"]}, "invalid_body"),
        ({"installs": [{"configuration": str(config), "cwd": "/"}]}, "unknown_field"),
        (
            {"installs": [{"configuration": str(tmp_path / "nope.yaml"), "device": "d"}]},
            "config_not_found",
        ),
        ({"installs": [{"configuration": str(config), "device": "d"}] * 501}, "too_many"),
        ([], "invalid_body"),
    ]:
        assert _error(parse_installs_request, body).code == code, body
    error = _error(
        parse_installs_request,
        {
            "installs": [
                {"configuration": str(config), "device": "d"},
                {"configuration": str(config), "device": "e"},
            ]
        },
    )
    assert (error.code, error.details["index"]) == ("duplicate_configuration", 1)
    assert error.message.startswith("installs[1]: ")
