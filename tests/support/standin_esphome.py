#!/usr/bin/env python3
"""A stand-in for the ``esphome`` CLI: the subset meshd runs, with controllable timing.

Tests and benchmarks that are about meshd (queues, shutdown, the mesh) rather than
about ESPHome point ``--esphome`` at ``python standin_esphome.py``: a compile then
takes exactly as long as asked, can fail on demand, and still leaves the files real
esphome leaves, where it leaves them, so ``meshd/toolchain/storage.py`` reads them:

* ``<data_dir>/storage/<config file name>.json``: a StorageJSON (``storage_version``
  1, ``name``, ``esp_platform``, ``core_platform``, ``build_path``,
  ``firmware_bin_path``...), where ``<data_dir>`` is ``$ESPHOME_DATA_DIR`` or
  ``<config dir>/.esphome``;
* the firmware at ``<build>/.pioenvs/<name>/program`` (host) or ``firmware.bin``.

Commands: ``version``, ``config``, ``compile``, ``upload --device``, ``clean``,
``clean-all``, ``rename``, ``bundle [-o OUT] [--list-only]``; global options
``--dashboard`` (progress bars as the dashboard gets them), ``-v``, ``-q``. Output uses
esphome's shapes (``INFO ...`` records, ``Compiling app... Build path: ...``,
PlatformIO's ``Compiling .pioenvs/...`` lines, ``Uploading: [===   ] 42%``,
``Failed config`` blocks) so meshd's progress and failure parsing sees real input.

Behaviour is set per configuration by comment lines in the YAML, or for every run by
environment variables (which win)::

    # standin: compile_seconds=30      STANDIN_COMPILE_SECONDS
    # standin: upload_seconds=2        STANDIN_UPLOAD_SECONDS
    # standin: compile_fail=1          STANDIN_COMPILE_FAIL  (a compiler error)
    # standin: upload_fail=1           STANDIN_UPLOAD_FAIL   (connection refused)
    # standin: invalid=1               STANDIN_INVALID       (a Failed config block)
    # standin: ignore_sigterm=1        STANDIN_IGNORE_SIGTERM (a compile slow to stop:
                                       only the SIGKILL after the grace period ends it)
    # standin: chatter_bytes=100000    STANDIN_CHATTER_BYTES (warnings: a long log)
    # standin: link_seconds=2          STANDIN_LINK_SECONDS  (silent, after "Linking")
    # standin: grandchild_seconds=60   STANDIN_GRANDCHILD_SECONDS (a silent child in our group)
    # standin: firmware_bytes=4000000  STANDIN_FIRMWARE_BYTES (pad the image: big artifacts)
    # standin: ota_port=3232           STANDIN_OTA_PORT (flash a real OTA endpoint, below)

``STANDIN_ESPHOME_VERSION`` sets the version (default 2026.6.5); with
``STANDIN_VERSION_GATE`` set, ``version`` answers only once that file exists. Every upload appends
``{"device", "config", "firmware", "sha256"}`` to ``<data_dir>/standin-uploads.jsonl``
so a test can see what was "flashed" (``STANDIN_UPLOAD_LOG`` names another file for
that record: an upload from a scratch data directory). ``STANDIN_PID_FILE`` (if set)
receives the pid of a running compile, so a test can check it was killed.
``STANDIN_CHILD_PID_FILE`` (if set) makes a compile start a long-sleeping child in its
process group first, as esphome starts PlatformIO, and receives that child's pid.

Every build is unique: the image carries a random build id, so two compiles of one
YAML give two digests and a test can tell which build a device received. Each compile
appends ``{"build", "config", "sha256", "size", "pid", "ppid", "at"}`` to the compile
journal ``<data_dir>/standin-compiles.jsonl`` (and, as ``"cmd": "built"``, to
``$STANDIN_JOURNAL``) and prints ``standin build ID sha256
DIGEST``. If ``STANDIN_JOURNAL`` names a file, every command that does work (compile,
upload, clean, clean-all, rename, bundle) appends ``{"cmd", "pid", "ppid", "at",
"config"}`` to it when it starts, so a test can find processes a dead daemon left.

With an ``ota_port``, ``upload --device HOST`` speaks ESPHome's OTA protocol (as
``esphome/espota2.py`` does, without a password) to ``HOST:ota_port``: an OTA emulator
(tests/support/ota_emulator.py) then records the image it received. It prints
``OTA successful`` as soon as the device acknowledged the end of the update (0x45),
before its last ack, as espota2 logs it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import yaml

VERSION = os.environ.get("STANDIN_ESPHOME_VERSION", "2026.6.5")
# How many fake objects a compile "builds"; progress moves once per object.
OBJECTS = 20
_DIRECTIVE_RE = re.compile(r"^\s*#\s*standin:\s*(\w+)\s*=\s*(\S+)")
_ALLOWED_NAME = re.compile(r"^[a-z0-9-]+$")
_PLATFORMS = {"host": "HOST", "esp8266": "ESP8266", "esp32": "ESP32", "rp2040": "RP2040"}

DASHBOARD = False


class _Loader(yaml.SafeLoader):
    """PyYAML that keeps ESPHome's tags (!secret, !lambda...) as plain values."""


def _any_tag(loader: _Loader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)  # type: ignore[arg-type]


_Loader.add_multi_constructor("!", _any_tag)


def log(level: str, message: str) -> None:
    """An esphome log record on stderr (colour codes escaped as with --dashboard)."""
    colour = {"INFO": "32", "WARNING": "33", "ERROR": "31"}.get(level, "0")
    prefix = f"\\033[{colour}m" if DASHBOARD else ""
    suffix = "\\033[0m" if DASHBOARD else ""
    print(f"{prefix}{level} {message}{suffix}", file=sys.stderr, flush=True)


def out(line: str) -> None:
    print(line, flush=True)


def _append_json(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, written with a single write so concurrent appenders do not mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def journal(cmd: str, config: str) -> None:
    """Note this process in ``$STANDIN_JOURNAL`` (pid, parent) before doing any work."""
    target = os.environ.get("STANDIN_JOURNAL")
    if target:
        record = {"cmd": cmd, "pid": os.getpid(), "ppid": os.getppid(), "at": time.time()}
        _append_json(Path(target), {**record, "config": config})


class Config:
    """What the stand-in needs from a YAML file: name, platform, directives."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.text = path.read_text(encoding="utf-8")
        self.data: dict[str, Any] = yaml.load(self.text, Loader=_Loader) or {}
        self.directives: dict[str, str] = {}
        for line in self.text.splitlines():
            match = _DIRECTIVE_RE.match(line)
            if match:
                self.directives[match.group(1)] = match.group(2)

    def setting(self, key: str, default: str = "") -> str:
        return os.environ.get(f"STANDIN_{key.upper()}") or self.directives.get(key, default)

    def flag(self, key: str) -> bool:
        return self.setting(key, "0").lower() in ("1", "true", "yes")

    @property
    def name(self) -> str:
        return str((self.data.get("esphome") or {}).get("name", ""))

    @property
    def platform(self) -> str:
        return next((key for key in _PLATFORMS if key in self.data), "")

    @property
    def data_dir(self) -> Path:
        env = os.environ.get("ESPHOME_DATA_DIR")
        return Path(env) if env else self.path.parent / ".esphome"

    @property
    def build_path(self) -> Path:
        return self.data_dir / "build" / self.name

    @property
    def firmware(self) -> Path:
        leaf = "program" if self.platform == "host" else "firmware.bin"
        return self.build_path / ".pioenvs" / self.name / leaf

    @property
    def storage(self) -> Path:
        return self.data_dir / "storage" / f"{self.path.name}.json"


def load(path_text: str) -> Config:
    """Read and validate a configuration the way esphome reports problems; exit 2 on error."""
    path = Path(path_text)
    log("INFO", f"ESPHome {VERSION}")
    log("INFO", f"Reading configuration {path_text}...")
    try:
        config = Config(path)
    except FileNotFoundError:
        log("ERROR", f"Error while reading config: Could not read configuration file {path}")
        sys.exit(2)
    except yaml.YAMLError as exc:
        log("ERROR", f"Error while reading config: Invalid YAML syntax:\n\n{exc}")
        sys.exit(2)
    problems = []
    if not config.name:
        problems.append(("esphome", "[name] is a required option for [esphome]."))
    if not config.platform:
        problems.append(("esphome", "Platform missing. You must include one of the platforms."))
    if config.flag("invalid"):
        problems.append(
            ("logger", "[levelx] is an invalid option for [logger]. Did you mean [level]?")
        )
    if problems:
        out("Failed config")
        out("")
        for section, message in problems:
            out(f"{section}: [source {path_text}:1]")
            out("  ")
            out(f"  {message}")
        sys.exit(2)
    return config


def cmd_version(_args: argparse.Namespace) -> int:
    gate = os.environ.get("STANDIN_VERSION_GATE")
    while gate and not Path(gate).exists():  # a slow esphome: answers once the file exists
        time.sleep(0.05)
    out(f"Version: {VERSION}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = load(args.configuration)
    log("INFO", "Configuration is valid!")
    out(config.text.rstrip("\n"))
    return 0


def _storage_json(config: Config) -> dict[str, Any]:
    return {
        "storage_version": 1,
        "name": config.name,
        "friendly_name": None,
        "comment": None,
        "esphome_version": VERSION,
        "src_version": 1,
        "address": f"{config.name}.local",
        "web_port": None,
        "esp_platform": _PLATFORMS[config.platform],
        "build_path": str(config.build_path),
        "firmware_bin_path": str(config.firmware),
        "loaded_integrations": sorted(k for k in config.data if isinstance(k, str)),
        "loaded_platforms": [],
        "no_mdns": False,
        "framework": "host" if config.platform == "host" else "arduino",
        "core_platform": config.platform,
        "toolchain": "platformio",
        "area": None,
        "framework_version": None,
    }


def config_hash(config: Config) -> str:
    """The stand-in's ``CORE.config_hash``: 8 hex digits that change with the YAML."""
    return hashlib.sha256(config.text.encode()).hexdigest()[:8]


def cmd_config_hash(args: argparse.Namespace) -> int:
    # Real esphome prints the hash as 0x........ on stdout (command_config_hash).
    out(f"0x{config_hash(load(args.configuration))}")
    return 0


def compile_config(config: Config) -> int:
    seconds = float(config.setting("compile_seconds", "0"))
    if config.flag("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child_pid_file = os.environ.get("STANDIN_CHILD_PID_FILE")
    if child_pid_file:
        # Like PlatformIO under esphome: same process group. Its stdio is not the pipe,
        # so a successful compile still ends when the stand-in exits.
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        Path(child_pid_file).write_text(str(child.pid), encoding="utf-8")
    if os.environ.get("STANDIN_PID_FILE"):
        Path(os.environ["STANDIN_PID_FILE"]).write_text(str(os.getpid()), encoding="utf-8")
    log("INFO", "Generating C++ source...")
    src = config.build_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    for index in range(OBJECTS):
        (src / f"unit{index:02d}.cpp").write_text(f"// stand-in unit {index}\n", encoding="utf-8")
    grandchild = float(config.setting("grandchild_seconds", "0"))
    if grandchild:
        # A "compiler" in our process group that prints nothing, like PlatformIO's gcc.
        child = subprocess.Popen(
            [sys.executable, "-c", f"import time; time.sleep({grandchild})"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if os.environ.get("STANDIN_JOURNAL"):
            # Owned, like its parent, by the daemon that started this compile.
            record = {"cmd": "grandchild", "pid": child.pid, "ppid": os.getppid()}
            _append_json(Path(os.environ["STANDIN_JOURNAL"]), {**record, "at": time.time()})
    log("INFO", f"Compiling app... Build path: {config.build_path}")
    out(f"Processing {config.name} (platform: {config.platform})")
    chatter = int(config.setting("chatter_bytes", "0")) // OBJECTS
    for index in range(OBJECTS):
        time.sleep(seconds / OBJECTS)
        out(f"Compiling .pioenvs/{config.name}/src/unit{index:02d}.o")
        for _ in range(chatter // 100):
            out(f"src/unit{index:02d}.cpp: warning: " + "w" * 80)
        if config.flag("compile_fail") and index == OBJECTS // 2:
            out(f"src/unit{index:02d}.cpp:1:1: error: stand-in compile failure")
            out(f"*** [.pioenvs/{config.name}/src/unit{index:02d}.o] Error 1")
            out("========================= [FAILED] Took 0.10 seconds =========================")
            return 1
    out(f"Linking .pioenvs/{config.name}/program")
    # A linker prints nothing for a while: a dead daemon's broken pipe goes unnoticed.
    time.sleep(float(config.setting("link_seconds", "0")))
    config.firmware.parent.mkdir(parents=True, exist_ok=True)
    source = hashlib.sha256(config.text.encode()).hexdigest()
    build = secrets.token_hex(8)
    image = f"standin firmware {config.name} {source} build {build}\n".encode()
    pad = int(config.setting("firmware_bytes", "0"))
    if pad > len(image):
        # Incompressible, so transfer tests move the bytes they ask for.
        image += hashlib.shake_256(build.encode()).digest(pad - len(image))
    tmp = config.firmware.with_name(f".{config.firmware.name}.tmp")
    tmp.write_bytes(image)
    tmp.replace(config.firmware)
    digest = hashlib.sha256(image).hexdigest()
    built = {
        "build": build,
        "config": str(config.path),
        "sha256": digest,
        "size": len(image),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "at": time.time(),
    }
    _append_json(config.data_dir / "standin-compiles.jsonl", built)
    if os.environ.get("STANDIN_JOURNAL"):
        # clean-all removes the data dir's journal; this one outlives it.
        _append_json(Path(os.environ["STANDIN_JOURNAL"]), {"cmd": "built", **built})
    log("INFO", f"standin build {build} sha256 {digest}")
    config.storage.parent.mkdir(parents=True, exist_ok=True)
    config.storage.write_text(json.dumps(_storage_json(config), indent=2) + "\n", encoding="utf-8")
    # Like esphome's build_info.json (what the firmware's build reports as itself).
    info = {
        "config_hash": int(config_hash(config), 16),
        "esphome_version": VERSION,
        "build_time_str": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    (config.build_path / "build_info.json").write_text(json.dumps(info), encoding="utf-8")
    validated = config.storage.with_name(f"{config.path.name}.validated.yaml")
    validated.write_text(config.text, encoding="utf-8")
    out("========================= [SUCCESS] Took 0.10 seconds =========================")
    log("INFO", f"Successfully compiled program to path '{config.firmware}'")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    journal("compile", args.configuration)
    return compile_config(load(args.configuration))


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("device closed the connection")
        data += chunk
    return data


def _expect(sock: socket.socket, what: str, *codes: int) -> bytes:
    got = _recv_exactly(sock, 1)
    if got[0] not in codes:
        raise ConnectionError(f"{what}: device answered 0x{got[0]:02x}")
    return got


def ota_send(host: str, port: int, payload: bytes, seconds: float) -> None:
    """ESPHome OTA (espota2) without a password: the client half of ota_emulator.py."""
    block = 8192
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(bytes([0x6C, 0x26, 0xF7, 0x5C, 0x45]))
        _expect(sock, "magic", 0x00)
        _recv_exactly(sock, 1)  # OTA version
        sock.sendall(bytes([0x04]))  # extended protocol, no compression, no auth
        _expect(sock, "features", 0x48)
        _recv_exactly(sock, 1)
        _expect(sock, "auth", 0x41)
        sock.sendall(bytes([0x00]))  # OTA type: app
        sock.sendall(len(payload).to_bytes(4, "big"))
        _expect(sock, "prepare", 0x42)
        sock.sendall(hashlib.md5(payload).hexdigest().encode())
        _expect(sock, "md5", 0x43)
        blocks = max(1, -(-len(payload) // block))
        for index in range(blocks):
            sock.sendall(payload[index * block : (index + 1) * block])
            _expect(sock, "chunk", 0x47)
            percent = (index + 1) * 100 // blocks
            if DASHBOARD:
                sys.stderr.write(f"\rUploading: [{'=' * (percent // 5):<20}] {percent}% ")
                sys.stderr.flush()
            time.sleep(seconds / blocks)
        if DASHBOARD:
            sys.stderr.write("\n")
        _expect(sock, "receive", 0x44)
        _expect(sock, "update end", 0x45)
        log("INFO", "OTA successful")
        sock.sendall(bytes([0x00]))


def upload_config(config: Config, device: str) -> int:
    try:
        storage = json.loads(config.storage.read_text(encoding="utf-8"))
    except FileNotFoundError:
        storage = None
    firmware = Path(storage["firmware_bin_path"]) if storage else config.firmware
    if not firmware.is_file():
        log("ERROR", f"Firmware file {firmware} does not exist. Compile it first.")
        return 1
    ota_port = config.setting("ota_port")
    port = int(ota_port) if ota_port else (6053 if config.platform == "host" else 3232)
    log("INFO", f"Connecting to {device} port {port}...")
    if config.flag("upload_fail"):
        log("ERROR", f"Connecting to {device} port {port} failed: [Errno 111] Connection refused")
        return 1
    payload = firmware.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    seconds = float(config.setting("upload_seconds", "0"))
    if ota_port:
        log("INFO", f"Uploading {firmware} ({len(payload)} bytes, sha256 {digest})")
        try:
            ota_send(device, port, payload, seconds)
        except OSError as exc:
            log("ERROR", f"Connecting to {device} port {port} failed: {exc}")
            return 1
    else:
        log("INFO", f"Connected to {device}")
        log("INFO", f"Uploading {firmware} ({len(payload)} bytes, sha256 {digest})")
        for percent in range(0, 101, 10):
            time.sleep(seconds / 11)
            if DASHBOARD:
                bar = "=" * (percent // 5)
                sys.stderr.write(f"\rUploading: [{bar:<20}] {percent}% ")
                sys.stderr.flush()
        if DASHBOARD:
            sys.stderr.write("\n")
        log("INFO", f"Upload took {seconds:.2f} seconds, waiting for result...")
        log("INFO", "OTA successful")
    record = {
        "device": device,
        "config": str(config.path),
        "firmware": str(firmware),
        "sha256": digest,
    }
    uploads = Path(
        os.environ.get("STANDIN_UPLOAD_LOG") or config.data_dir / "standin-uploads.jsonl"
    )
    _append_json(uploads, record)
    log("INFO", "Successfully uploaded program.")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    journal("upload", args.configuration)
    if not args.device:
        log("ERROR", "No device given (--device)")
        return 2
    return upload_config(load(args.configuration), args.device)


def cmd_clean(args: argparse.Namespace) -> int:
    journal("clean", args.configuration)
    config = load(args.configuration)
    log("INFO", f"Deleting {config.build_path}")
    shutil.rmtree(config.build_path, ignore_errors=True)
    log("INFO", "Done!")
    return 0


def cmd_clean_all(args: argparse.Namespace) -> int:
    journal("clean-all", " ".join(args.configuration))
    for directory in args.configuration:
        target = Path(directory) / ".esphome"
        log("INFO", f"Cleaning {target}")
        shutil.rmtree(target, ignore_errors=True)
    log("INFO", "Done!")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    """As ``esphome rename`` (esphome/__main__.py ``command_rename``): refuse a taken name,
    write NEW.yaml, validate it, then compile and upload it (``run``); only on success
    remove the old YAML. On a failure it sees it removes NEW.yaml; killed (SIGTERM,
    SIGKILL) it leaves NEW.yaml behind, exactly like esphome."""
    journal("rename", args.configuration)
    config = load(args.configuration)
    if not _ALLOWED_NAME.match(args.name):
        out(
            f"'{args.name}' is an invalid name. Valid characters are: "
            "abcdefghijklmnopqrstuvwxyz0123456789- (lowercase, no spaces)"
        )
        return 1
    if args.name == config.name:
        out(f"'{args.name}' is already the device's name.")
        return 1
    new_path = config.path.with_name(f"{args.name}.yaml")
    if new_path.exists():
        out(
            f"Cannot rename: {new_path} already exists. "
            "Refusing to overwrite an existing configuration."
        )
        return 1
    new_text = re.sub(r"(?m)^(\s*name:\s*)\S+", rf"\g<1>{args.name}", config.text, count=1)
    out(f"Updating {config.path} to {new_path}")
    new_path.write_text(new_text, encoding="utf-8")
    try:
        renamed = Config(new_path)  # esphome runs `esphome config NEW.yaml` here
    except (OSError, yaml.YAMLError):
        renamed = None
    if renamed is None or renamed.flag("invalid"):
        out("Rename failed. Reverting changes.")
        new_path.unlink(missing_ok=True)
        return 1
    code = compile_config(renamed) or upload_config(renamed, f"{config.name}.local")
    if code:
        new_path.unlink(missing_ok=True)
        return 1
    config.path.unlink()
    out("SUCCESS")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    journal("bundle", args.configuration)
    config = load(args.configuration)
    files = [config.path.name]
    secrets = config.path.parent / "secrets.yaml"
    if secrets.is_file():
        files.append(secrets.name)
    if args.list_only:
        for name in files:
            out(f"  {name}")
        return 0
    target = Path(args.output or config.path.with_name(f"{config.path.stem}.esphomebundle.tar.gz"))
    # Real esphome writes manifest.json first (esphome/bundle.py, manifest_version 1).
    manifest = {
        "manifest_version": 1,
        "esphome_version": VERSION,
        "config_filename": config.path.name,
        "files": files,
        "has_secrets": secrets.is_file(),
    }
    data = json.dumps(manifest, indent=2).encode()
    with tarfile.open(target, "w:gz") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name in files:
            tar.add(config.path.parent / name, arcname=name)
    log("INFO", f"Bundle written to {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    global DASHBOARD
    parser = argparse.ArgumentParser(prog="esphome")
    parser.add_argument("--dashboard", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version").set_defaults(func=cmd_version)
    for name, func in (("config", cmd_config), ("compile", cmd_compile), ("clean", cmd_clean)):
        sub = commands.add_parser(name)
        sub.add_argument("configuration")
        sub.add_argument("--show-secrets", action="store_true")
        sub.set_defaults(func=func)
    sub = commands.add_parser("config-hash")
    sub.add_argument("configuration")
    sub.set_defaults(func=cmd_config_hash)
    sub = commands.add_parser("upload")
    sub.add_argument("configuration")
    sub.add_argument("--device")
    sub.set_defaults(func=cmd_upload)
    sub = commands.add_parser("clean-all")
    sub.add_argument("configuration", nargs="+")
    sub.set_defaults(func=cmd_clean_all)
    sub = commands.add_parser("rename")
    sub.add_argument("configuration")
    sub.add_argument("name")
    sub.set_defaults(func=cmd_rename)
    sub = commands.add_parser("bundle")
    sub.add_argument("configuration")
    sub.add_argument("-o", "--output")
    sub.add_argument("--list-only", action="store_true")
    sub.set_defaults(func=cmd_bundle)
    args = parser.parse_args(argv)
    DASHBOARD = args.dashboard
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
