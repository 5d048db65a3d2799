"""Settings layering (defaults < TOML < MESHD_* < flags) and the sd_notify client."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from meshd.config import (
    ConfigError,
    HostPort,
    VersionPolicy,
    default_data_dir,
    load_settings,
    parse_host_port,
)
from meshd.sdnotify import Notifier


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path)}, env={})
    assert settings.api == HostPort("127.0.0.1", 6055)
    assert settings.esphome == ()  # found at start: beside the interpreter, then PATH
    assert settings.upload_slots == 4 and settings.receiver and settings.offload
    assert settings.version_policy is VersionPolicy.PROVISION
    assert settings.toolchain_provision and settings.toolchain_find_links == ()
    assert settings.toolchain_index_url is None
    assert settings.toolchain_max_idle == 30 * 86400 and settings.toolchain_disk_budget == 4 << 30
    assert settings.name  # the hostname
    assert settings.config_file is None


def test_data_dir_precedence(tmp_path: Path) -> None:
    home_default = default_data_dir({})
    assert home_default == Path.home() / ".local" / "share" / "meshd"
    assert default_data_dir({"STATE_DIRECTORY": "/var/lib/meshd"}) == Path("/var/lib/meshd")
    assert (
        default_data_dir({"STATE_DIRECTORY": "/var/lib/meshd", "MESHD_DATA_DIR": str(tmp_path)})
        == tmp_path
    )
    flagged = load_settings(
        {"data_dir": str(tmp_path / "flag")}, env={"MESHD_DATA_DIR": str(tmp_path / "env")}
    )
    assert flagged.data_dir == tmp_path / "flag"


def test_layers_file_env_flags(tmp_path: Path) -> None:
    (tmp_path / "meshd.toml").write_text(
        '[meshd]\nname = "from-file"\nupload-slots = 2\nesphome = ["python3", "-m", "esphome"]\n'
        'peers = ["10.0.0.2:6056", "10.0.0.3"]\nreceiver = false\nheartbeat = 5\n'
    )
    env = {
        "MESHD_DATA_DIR": str(tmp_path),
        "MESHD_NAME": "from-env",
        "MESHD_MDNS_INTERFACES": "192.168.1.2, 10.0.0.1",
        "MESHD_OFFLOAD": "no",
    }
    settings = load_settings({"upload_slots": 8, "receiver": None}, env=env)
    assert settings.config_file == tmp_path / "meshd.toml"
    assert settings.name == "from-env"  # env beats file
    assert settings.upload_slots == 8  # flag beats file
    assert settings.receiver is False  # a flag not given leaves the file's value
    assert settings.offload is False
    assert settings.esphome == ("python3", "-m", "esphome")
    assert settings.peers == (HostPort("10.0.0.2", 6056), HostPort("10.0.0.3", 6056))
    assert settings.mdns_interfaces == ("192.168.1.2", "10.0.0.1")
    assert settings.heartbeat == 5.0


def test_esphome_command_is_shell_split(tmp_path: Path) -> None:
    settings = load_settings(
        {"data_dir": str(tmp_path), "esphome": "unshare -n sh -c 'exec \"$@\"' sh esphome"},
        env={},
    )
    assert settings.esphome == ("unshare", "-n", "sh", "-c", 'exec "$@"', "sh", "esphome")


def test_explicit_config_may_move_the_data_dir(tmp_path: Path) -> None:
    config = tmp_path / "conf.toml"
    config.write_text(f'data_dir = "{tmp_path / "elsewhere"}"\napi = "127.0.0.1:0"\n')
    settings = load_settings({}, config_file=config, env={})
    assert settings.data_dir == tmp_path / "elsewhere"
    assert settings.api == HostPort("127.0.0.1", 0)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("upload_slot = 2\n", "unknown setting 'upload_slot'"),
        ("upload_slots = 0\n", "must be at least 1"),
        ('version_policy = "newest"\n', "not a version policy"),
        ('api = "localhost:http"\n', "is not a number"),
        ("receiver = 3\n", "not a boolean"),
        ("name = [\n", "conf.toml"),
    ],
)
def test_bad_settings_name_the_problem(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "conf.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_settings({"data_dir": str(tmp_path)}, config_file=config, env={})


def test_bad_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment: upload_slots"):
        load_settings({"data_dir": str(tmp_path)}, env={"MESHD_UPLOAD_SLOTS": "many"})


def test_host_port_forms() -> None:
    assert parse_host_port("[::1]:80") == HostPort("::1", 80)
    assert str(HostPort("::1", 80)) == "[::1]:80"
    assert parse_host_port("host", default_port=7) == HostPort("host", 7)
    for bad in ("host", "h:70000", ":80", "[::1"):
        with pytest.raises(ConfigError):
            parse_host_port(bad)


def test_notifier_paths_and_abstract_sockets(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    assert not Notifier({}).notify("READY=1")
    name = f"meshd-test-{tmp_path.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "3000000"})
        assert notifier.watchdog_interval == 1.5
        assert notifier.ready("up")
        assert sock.recv(100) == b"READY=1\nSTATUS=up"
    # A socket that is gone is logged, not raised: the daemon keeps serving.
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).stopping()


def test_systemd_configuration_directory(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "meshd.toml").write_text('name = "from-etc"\n')
    env = {"STATE_DIRECTORY": str(tmp_path / "state"), "CONFIGURATION_DIRECTORY": str(etc)}
    settings = load_settings({}, env=env)
    assert settings.name == "from-etc" and settings.config_file == etc / "meshd.toml"
    assert settings.data_dir == tmp_path / "state"


def test_fleet_settings_take_durations_and_counts(tmp_path: Path) -> None:
    defaults = load_settings({"data_dir": str(tmp_path)}, env={})
    assert defaults.armed_upload_ttl == 7 * 86400
    assert (defaults.kept_builds, defaults.history_keep) == (3, 1000)
    assert defaults.history_max_age == 30 * 86400
    (tmp_path / "meshd.toml").write_text(
        'armed-upload-ttl = "2d"\nkept-builds = 0\nhistory-keep = 50\nhistory_max_age = 3600\n'
    )
    env = {"MESHD_DATA_DIR": str(tmp_path), "MESHD_ARMED_UPLOAD_TTL": "90m"}
    settings = load_settings({}, env=env)
    assert settings.armed_upload_ttl == 5400  # env beats file
    assert (settings.kept_builds, settings.history_keep, settings.history_max_age) == (0, 50, 3600)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("armed_upload_ttl", "soon", "not a duration"),
        ("armed_upload_ttl", "0", "positive duration"),
        ("armed_upload_ttl", "-3d", "positive duration"),
        ("history_max_age", "inf", "positive duration"),
        ("kept_builds", "-1", "0 or more"),
        ("history_keep", "many", "not a whole number"),
    ],
)
def test_fleet_settings_reject_bad_values(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({"data_dir": str(tmp_path), key: value}, env={})


def test_toolchain_settings_from_every_layer(tmp_path: Path) -> None:
    (tmp_path / "meshd.toml").write_text(
        '[meshd]\ntoolchain_find_links = ["/srv/wheels", "/mnt/more"]\n'
        'toolchain_max_idle = "12h"\ntoolchain_disk_budget = "500M"\n'
    )
    settings = load_settings(
        {"data_dir": str(tmp_path), "toolchain_provision": False},
        env={"MESHD_TOOLCHAIN_INDEX_URL": "http://pypi.lan/simple"},
    )
    assert settings.toolchain_find_links == ("/srv/wheels", "/mnt/more")
    assert settings.toolchain_max_idle == 12 * 3600
    assert settings.toolchain_disk_budget == 500 << 20
    assert settings.toolchain_index_url == "http://pypi.lan/simple"
    assert settings.toolchain_provision is False
    flagged = load_settings(
        {"data_dir": str(tmp_path), "toolchain_find_links": ("/a", "/b")}, env={}
    )
    assert flagged.toolchain_find_links == ("/a", "/b")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("toolchain_disk_budget", "lots", "is not a size"),
        ("toolchain_disk_budget", "-1G", "at least 1M"),
        ("toolchain_index_url", "ftp://x", "not an http"),
        ("toolchain_max_idle", "soon", "not a duration"),
    ],
)
def test_bad_toolchain_settings_name_the_problem(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings({"data_dir": str(tmp_path), key: value}, env={})
    assert key in str(caught.value)
