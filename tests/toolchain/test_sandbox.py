"""The receiver's build sandbox, attacked from inside with real bubblewrap.

A peer trusted to send work controls the code esphome runs (external components,
lambdas, PlatformIO scripts). These tests put that code in a sandboxed work directory
of a receiver whose data dir is real (identity key, api.json, meshd.db, a content
blob, another offloader's secrets) and check what it gets: nothing it should not.

Blocked by the sandbox: every read and write outside the job's own work directory,
HOME and private PlatformIO core (data dir, other offloaders, the shared toolchains,
host /tmp, other processes' /proc), capabilities, the daemon's environment.
Reachable on purpose: the network (PlatformIO downloads libraries), loopback
included, so the control API's token is what protects it (the sandbox cannot read
it); ``network=False`` takes the network away too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshd.api.server import write_api_file
from meshd.jobs.model import JobType
from meshd.mesh.content.store import ContentStore
from meshd.mesh.security.identity import load_or_create
from meshd.mesh.security.trust import TrustStore
from meshd.toolchain.runners import make_runners
from meshd.toolchain.sandbox import (
    TIMEOUT_EXIT,
    UNSAFE_FLAG,
    UNSAFE_WARNING,
    ResourceLimits,
    Sandbox,
    SandboxArea,
    SandboxTimeout,
    SandboxUnavailable,
    command_readonly_paths,
    detect,
    find_bwrap,
    receiver_sandbox,
    run_in_sandbox,
)
from meshd.toolchain.tools import Toolchain
from tests.support.host_device import HostDevice, free_port, host_yaml
from tests.support.jobs import make_job, run_job

REPO = Path(__file__).resolve().parents[2]
ATTACKER = REPO / "tests" / "support" / "sandbox_attacker.py"
ESPHOME = str(Path(sys.executable).parent / "esphome")
API_TOKEN = "SECRET-API-TOKEN-" + "t" * 40


@dataclass
class ReceiverDir:
    """A receiver's real data dir with two offloaders' trees and the shared core."""

    data: Path
    secrets: dict[str, Path]
    area: SandboxArea
    other_workdir: Path
    shared_core: Path

    def workdir(self) -> Path:
        return self.area.workdir


@pytest.fixture
def receiver_dir(tmp_path: Path) -> Iterator[ReceiverDir]:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    load_or_create(data)  # identity.pem, mode 0600
    write_api_file(data, "http://127.0.0.1:6055", API_TOKEN)
    with TrustStore.open(data) as trust:  # meshd.db
        trust.add("ab" * 32, name="victim-offloader", may_send_work=True)
    logs = data / "logs"
    logs.mkdir()
    (logs / "job.log").write_text("SECRET-LOG wifi_password=hunter2\n")
    blob = ContentStore(data / "mesh" / "cas").put_bytes(b"SECRET-BLOB of another offloader")
    builds = data / "mesh" / "builds"
    other = builds / "other-offloader" / "kitchen"
    other.mkdir(parents=True)
    (other / "secrets.yaml").write_text("wifi_password: SECRET-OTHER-WIFI\n")
    shared = tmp_path / "pio-shared"
    (shared / "packages" / "tool-demo").mkdir(parents=True)
    (shared / "packages" / "tool-demo" / "package.json").write_text('{"name": "tool-demo"}\n')
    (shared / "platforms" / "native").mkdir(parents=True)
    area = SandboxArea.for_offloader(
        builds / "me-offloader" / "garage", data / "mesh" / "sandbox" / "me-offloader", shared
    )
    area.prepare()
    secrets = {
        "identity": data / "identity.pem",
        "api_token": data / "api.json",
        "database": data / "meshd.db",
        "log": logs / "job.log",
        "blob": ContentStore(data / "mesh" / "cas").path(blob),
        "other_secrets": other / "secrets.yaml",
    }
    yield ReceiverDir(data, secrets, area, other, shared)


@pytest.fixture(scope="module")
def bwrap_present() -> None:
    try:
        find_bwrap()
    except SandboxUnavailable as exc:
        pytest.fail(f"bubblewrap is part of the test environment (scripts/test): {exc}")


@pytest.fixture
def sandbox(bwrap_present: None, receiver_dir: ReceiverDir) -> Sandbox:
    return detect([receiver_dir.data])


class LoopbackServer:
    """A TCP server on 127.0.0.1 standing in for the control API's port."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.received.append(conn.recv(100))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    try:
        yield server
    finally:
        server.close()


async def attack(
    sandbox: Sandbox, receiver: ReceiverDir, spec: dict[str, object]
) -> tuple[dict[str, object], str]:
    """Run the attacker from inside the job's work directory; its report and all output."""
    script = receiver.workdir() / "components" / "thief" / "attack.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ATTACKER, script)
    lines: list[str] = []
    env = {"PATH": os.environ["PATH"], "MESHD_TEST_SECRET": "SECRET-ENV", "LANG": "C.UTF-8"}
    result = await run_in_sandbox(
        sandbox,
        receiver.area,
        [sys.executable, str(script), json.dumps(spec)],
        env=env,
        on_line=lines.append,
    )
    output = "\n".join(lines)
    assert result.returncode == 0, output
    report = next(line for line in lines if line.startswith("ATTACK-REPORT "))
    return json.loads(report.removeprefix("ATTACK-REPORT ")), output


async def test_a_hostile_build_reads_and_writes_nothing_outside_its_tree(
    sandbox: Sandbox, receiver_dir: ReceiverDir, loopback_server: LoopbackServer, tmp_path: Path
) -> None:
    host_tmp_secret = Path("/tmp") / f"meshd-host-tmp-{uuid.uuid4().hex}"
    host_tmp_secret.write_text("SECRET-HOST-TMP\n")
    inside_only = Path("/tmp") / f"meshd-written-in-sandbox-{uuid.uuid4().hex}"
    shared_tool = receiver_dir.shared_core / "packages" / "tool-demo" / "package.json"
    before = {path: path.read_bytes() for path in receiver_dir.secrets.values()}
    targets = {
        "data dir": receiver_dir.data / "planted.txt",
        "identity": receiver_dir.secrets["identity"],
        "other offloader": receiver_dir.other_workdir / "main.cpp",
        "shared toolchain": shared_tool,
        "usr": Path("/usr/lib/meshd-pwned"),
        "etc": Path("/etc/meshd-pwned"),
        "var": Path("/var/lib/meshd-pwned/x"),
        "host tmp": inside_only,
    }
    try:
        report, output = await attack(
            sandbox,
            receiver_dir,
            {
                "read": [
                    *map(str, receiver_dir.secrets.values()),
                    str(host_tmp_secret),
                    "/etc/shadow",
                    "/etc/ssl/private/ssl-cert-snakeoil.key",
                    "/etc/ssh/ssh_host_ed25519_key",
                    f"/proc/{os.getpid()}/environ",
                    str(REPO / "pyproject.toml"),
                ],
                "write": [*map(str, targets.values()), str(receiver_dir.workdir() / "ok.txt")],
                "connect": loopback_server.port,
                "exists": ["/etc/ssl/private", "/etc/ssl/certs", "/etc/ssh", "/etc/shadow"],
            },
        )
        # TLS roots are there for downloads; private keys and the rest of /etc are not.
        assert report["exists"] == {
            "/etc/ssl/private": False,
            "/etc/ssl/certs": Path("/etc/ssl/certs").exists(),
            "/etc/ssh": False,
            "/etc/shadow": False,
        }
        # Every secret read fails, and nothing secret shows in anything it printed.
        reads = report["read"]
        assert isinstance(reads, dict)
        assert {path: result["ok"] for path, result in reads.items()} == dict.fromkeys(reads, False)
        assert "SECRET" not in output.replace("MESHD_TEST_SECRET", "")
        # Writes outside its tree never reach the host. Real paths fail (read-only
        # root, read-only lent trees); a path under /tmp lands in the sandbox's own
        # tmpfs (this test's data dir is under /tmp, so it goes there too).
        writes = report["write"]
        assert isinstance(writes, dict)
        for name in ("usr", "etc", "var"):
            assert writes[str(targets[name])]["ok"] is False, name
            assert writes[str(targets[name])]["errno"] == 30, name  # EROFS
        assert writes[str(receiver_dir.workdir() / "ok.txt")]["ok"] is True
        assert (receiver_dir.workdir() / "ok.txt").is_file()
        assert not inside_only.exists() and not (receiver_dir.data / "planted.txt").exists()
        assert not (receiver_dir.other_workdir / "main.cpp").exists()
        for path in ("/usr/lib/meshd-pwned", "/etc/meshd-pwned", "/var/lib/meshd-pwned"):
            assert not Path(path).exists()
        assert shared_tool.read_text() == '{"name": "tool-demo"}\n'
        assert {path: path.read_bytes() for path in receiver_dir.secrets.values()} == before
        # Its world: a tmpfs root with the system read-only, its own PID namespace,
        # no capabilities, none of the daemon's environment.
        root = report["root"]
        assert isinstance(root, list)
        # Host top-level directories that are not lent (/usr, /etc entries and the
        # esphome installation's tree are) do not exist in there.
        hidden_top = {p.name for p in Path("/").iterdir()} - {"usr", "etc", "proc", "dev", "tmp"}
        hidden_top -= {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "var"}
        hidden_top -= {p.parts[1] for p in command_readonly_paths([sys.executable])}
        assert not hidden_top & set(root), hidden_top & set(root)
        pids = report["pids"]
        assert isinstance(pids, list) and max(pids) < 10
        assert report["cap_eff"] == "0000000000000000"
        env = report["env"]
        assert isinstance(env, dict)
        assert "MESHD_TEST_SECRET" not in env
        assert env["HOME"] == str(receiver_dir.area.home)
        assert env["PLATFORMIO_CORE_DIR"] == str(receiver_dir.area.pio_core)
        assert report["cwd"] == str(receiver_dir.workdir())
        # The network is shared on purpose: loopback is reachable, so the API's token
        # (unreadable above) is what protects the control API.
        assert report["connect"] == {"ok": True}
        assert b"hello from the sandbox\n" in loopback_server.received
    finally:
        host_tmp_secret.unlink(missing_ok=True)
        inside_only.unlink(missing_ok=True)


async def test_lent_toolchains_are_visible_read_only_in_the_private_core(
    sandbox: Sandbox, receiver_dir: ReceiverDir
) -> None:
    lent = receiver_dir.area.pio_core / "packages" / "tool-demo" / "package.json"
    report, _ = await attack(sandbox, receiver_dir, {"read": [str(lent)], "write": [str(lent)]})
    reads, writes = report["read"], report["write"]
    assert isinstance(reads, dict) and isinstance(writes, dict)
    assert reads[str(lent)] == {"ok": True, "data": '{"name": "tool-demo"}\n'}
    assert writes[str(lent)]["ok"] is False and writes[str(lent)]["errno"] == 30  # EROFS
    # What a build installs on top lands in its own core dir only.
    own = receiver_dir.area.pio_core / "packages" / "tool-new" / "package.json"
    report, _ = await attack(sandbox, receiver_dir, {"write": [str(own)]})
    assert report["write"] == {str(own): {"ok": True}}
    assert own.is_file() and not (receiver_dir.shared_core / "packages" / "tool-new").exists()


async def test_without_network_loopback_is_unreachable_too(
    bwrap_present: None, receiver_dir: ReceiverDir, loopback_server: LoopbackServer
) -> None:
    sandbox = detect([receiver_dir.data], network=False)
    report, _ = await attack(sandbox, receiver_dir, {"connect": loopback_server.port})
    connect = report["connect"]
    assert isinstance(connect, dict) and connect["ok"] is False
    assert loopback_server.received == []


# -- resource limits -----------------------------------------------------------------


async def run_python(sandbox: Sandbox, receiver: ReceiverDir, code: str) -> tuple[int, str]:
    lines: list[str] = []
    result = await run_in_sandbox(
        sandbox,
        receiver.area,
        [sys.executable, "-c", code],
        env={"PATH": os.environ["PATH"]},
        on_line=lines.append,
    )
    return result.returncode, "\n".join(lines)


async def test_memory_and_file_size_limits_hold(
    bwrap_present: None, receiver_dir: ReceiverDir
) -> None:
    limits = ResourceLimits(address_space=512 * 1024**2, file_size=1024**2)
    sandbox = detect([receiver_dir.data], limits=limits)
    code, out = await run_python(
        sandbox,
        receiver_dir,
        "try:\n b = bytearray(2 * 1024**3)\nexcept MemoryError:\n print('memory refused')\n"
        "try:\n open('big.bin', 'wb').write(b'x' * 2 * 1024**2)\n"
        "except OSError as e:\n print('file refused', e.errno)\n",
    )
    assert code == 0, out
    assert "memory refused" in out
    assert "file refused 27" in out  # EFBIG
    assert (receiver_dir.workdir() / "big.bin").stat().st_size <= 1024**2


async def test_limits_are_set_hard_inside(sandbox: Sandbox, receiver_dir: ReceiverDir) -> None:
    code, out = await run_python(
        sandbox,
        receiver_dir,
        "import resource as r\n"
        "for n in ('RLIMIT_NPROC', 'RLIMIT_AS', 'RLIMIT_FSIZE', 'RLIMIT_NOFILE', 'RLIMIT_CORE'):\n"
        " print(n, *r.getrlimit(getattr(r, n)))\n",
    )
    assert code == 0, out
    limits = sandbox.limits
    assert f"RLIMIT_NPROC {limits.processes} {limits.processes}" in out
    assert f"RLIMIT_AS {limits.address_space} {limits.address_space}" in out
    assert f"RLIMIT_FSIZE {limits.file_size} {limits.file_size}" in out
    assert f"RLIMIT_NOFILE {limits.open_files} {limits.open_files}" in out
    assert "RLIMIT_CORE 0 0" in out


def test_process_limit_stops_a_fork_bomb_of_an_unprivileged_daemon(bwrap_present: None) -> None:
    """The kernel exempts root from RLIMIT_NPROC, so this runs bwrap as ``nobody``, as a
    receiver under the systemd unit (an unprivileged dynamic user) would."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    # nobody cannot enter pytest's 0700 temporary tree; use a directory of its own.
    root = Path(tempfile.mkdtemp(prefix="meshd-nobody-"))
    try:
        root.chmod(0o755)
        area = SandboxArea(root / "work", root / "home", root / "platformio")
        area.prepare()
        for path in [*area.writable(), area.pio_core / "packages", area.pio_core / "platforms"]:
            os.chown(path, 65534, 65534)
        sandbox = Sandbox(bwrap=find_bwrap(), hidden=(), limits=ResourceLimits(processes=8))
        argv = sandbox.argv(
            ["/bin/sh", "-c", "for i in $(seq 30); do sleep 2 & done; wait; echo done"],
            area,
            {"PATH": "/usr/bin:/bin"},
        )
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        shutil.rmtree(root)
    output = result.stdout + result.stderr
    assert "Cannot fork" in output or "Resource temporarily unavailable" in output, output


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline.split(b"\0"):
                found.append(int(entry.name))
    return found


async def _wait_until(condition: object, what: str) -> None:
    for _ in range(200):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting until {what}")


async def test_wall_time_kills_everything_inside(
    bwrap_present: None, receiver_dir: ReceiverDir
) -> None:
    marker = str(3000 + uuid.uuid4().int % 1000)
    sandbox = detect([receiver_dir.data], limits=ResourceLimits(wall_time=2.0))
    with pytest.raises(SandboxTimeout, match="wall-time limit"):
        await run_in_sandbox(
            sandbox,
            receiver_dir.area,
            ["/bin/sh", "-c", f"sleep {marker} & sleep {marker} & wait"],
            env={"PATH": "/usr/bin:/bin"},
            on_line=lambda _line: None,
        )
    await _wait_until(lambda: not _processes_with(marker), "the sandboxed sleeps are gone")


async def test_wall_time_holds_for_any_runner_of_a_wrapped_toolchain(
    bwrap_present: None, receiver_dir: ReceiverDir
) -> None:
    """The limit is in the argv (coreutils timeout), not only in run_in_sandbox."""
    marker = str(5000 + uuid.uuid4().int % 1000)
    sandbox = detect([receiver_dir.data], limits=ResourceLimits(wall_time=1.0))
    slow = Toolchain(esphome=("/bin/sh", "-c", f"sleep {marker}", "sh"))
    wrapped = sandbox.wrap(slow, receiver_dir.area)
    result = await wrapped.run(
        wrapped.esphome_argv("compile", "x.yaml"), on_line=print, on_start=None
    )
    assert result.returncode == TIMEOUT_EXIT
    await _wait_until(lambda: not _processes_with(marker), "the sandboxed sleep is gone")


def test_prepare_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    """The private core dir is writable to builds: one may swap ``packages`` for a
    symlink into the data dir; preparing the next run must not act on its target."""
    victim = tmp_path / "data" / "mesh" / "cas"
    (victim / "ab").mkdir(parents=True)
    area = SandboxArea(tmp_path / "w", tmp_path / "h", tmp_path / "p")
    area.prepare()
    (area.pio_core / "packages").rmdir()
    (area.pio_core / "packages").symlink_to(victim)
    area.prepare()
    assert (area.pio_core / "packages").is_dir()
    assert not (area.pio_core / "packages").is_symlink()
    assert (victim / "ab").is_dir()  # an empty directory there survives


async def test_cancel_kills_everything_inside(sandbox: Sandbox, receiver_dir: ReceiverDir) -> None:
    marker = str(4000 + uuid.uuid4().int % 1000)
    task = asyncio.ensure_future(
        run_in_sandbox(
            sandbox,
            receiver_dir.area,
            ["/bin/sh", "-c", f"sleep {marker} & sleep {marker} & wait"],
            env={"PATH": "/usr/bin:/bin"},
            on_line=lambda _line: None,
        )
    )
    await _wait_until(lambda: len(_processes_with(marker)) == 2, "both sleeps run")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_until(lambda: not _processes_with(marker), "the sandboxed sleeps are gone")


# -- what the sandbox refuses to build -----------------------------------------------


def test_data_dir_inside_a_lent_tree_is_masked(bwrap_present: None, tmp_path: Path) -> None:
    """esphome installed with pip --user lends ~/.local, which holds the default data dir."""
    local = tmp_path / "home" / ".local"
    data = local / "share" / "meshd"
    data.mkdir(parents=True)
    sandbox = Sandbox(bwrap=find_bwrap(), hidden=(data,), readonly=(local,))
    area = SandboxArea(data / "mesh" / "builds" / "o" / "c", tmp_path / "h", tmp_path / "p")
    argv = sandbox.argv(["/bin/true"], area, {})
    lent = argv.index(str(local))
    masked = argv.index(str(data), lent + 1)
    assert argv[masked - 1] == "--tmpfs"
    assert argv.index(str(area.workdir), masked + 1) > masked  # the job's tree comes back
    with pytest.raises(SandboxUnavailable, match="data directory"):
        Sandbox(bwrap=find_bwrap(), hidden=(data,), readonly=(data,)).argv(["/bin/true"], area, {})
    with pytest.raises(SandboxUnavailable, match="contains the data dir"):
        sandbox.argv(["/bin/true"], SandboxArea(local, tmp_path / "h", tmp_path / "p"), {})


def test_environment_is_allow_listed(bwrap_present: None, tmp_path: Path) -> None:
    sandbox = Sandbox(bwrap=find_bwrap(), hidden=())
    area = SandboxArea(tmp_path / "w", tmp_path / "h", tmp_path / "p")
    env = {
        "PATH": "/usr/bin",
        "PLATFORMIO_SETTING_ENABLE_TELEMETRY": "No",
        "PLATFORMIO_CORE_DIR": "/var/lib/meshd/platformio",
        "ESPHOME_DATA_DIR": "/var/lib/meshd/esphome",
        "MESHD_DATA_DIR": "/var/lib/meshd",
        "AWS_SECRET_ACCESS_KEY": "x",
        "SSH_AUTH_SOCK": "/run/user/1000/ssh",
        "PLATFORMIO_AUTH_TOKEN": "secret-in-argv-would-show-in-ps",
    }
    argv = sandbox.argv(["/bin/true"], area, env)
    assert "--clearenv" in argv
    values = {argv[i + 1]: argv[i + 2] for i, arg in enumerate(argv) if arg == "--setenv"}
    assert values["PLATFORMIO_SETTING_ENABLE_TELEMETRY"] == "No"
    assert values["PLATFORMIO_CORE_DIR"] == str(area.pio_core)
    assert values["HOME"] == str(area.home)
    dropped = ("ESPHOME_DATA_DIR", "MESHD_DATA_DIR", "AWS_SECRET_ACCESS_KEY", "SSH_AUTH_SOCK")
    for name in (*dropped, "PLATFORMIO_AUTH_TOKEN"):
        assert name not in values
    assert not any("secret" in arg for arg in argv)


# -- unavailable, and the explicit opt-out -------------------------------------------


def test_missing_bwrap_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable) as info:
        detect([tmp_path], program=str(tmp_path / "no-such-bwrap"))
    message = str(info.value)
    assert "apt install bubblewrap" in message and UNSAFE_FLAG in message


def test_no_user_namespaces_is_reported_with_the_kernel_reason(
    bwrap_present: None, tmp_path: Path
) -> None:
    """A real host without user namespaces: a user namespace whose limit for further
    user namespaces is 0, where detection runs."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from meshd.toolchain.sandbox import SandboxUnavailable, detect\n"
        "try:\n"
        f"    detect([Path({str(tmp_path)!r})], scratch=Path({str(tmp_path)!r}))\n"
        "except SandboxUnavailable as exc:\n"
        "    print('UNAVAILABLE', exc)\n"
        "else:\n"
        "    print('AVAILABLE')\n"
    )
    result = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "sh",
            "-c",
            'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"',
            "sh",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if "max_user_namespaces" in result.stderr and "UNAVAILABLE" not in result.stdout:
        pytest.skip(f"cannot lower max_user_namespaces here: {result.stderr.strip()}")
    assert result.stdout.startswith("UNAVAILABLE"), result.stdout + result.stderr
    assert "cannot create a sandbox" in result.stdout
    assert "max_*_namespaces" in result.stdout or "namespace" in result.stdout
    assert UNSAFE_FLAG in result.stdout


def test_opting_out_warns_at_every_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(2):
        assert receiver_sandbox([tmp_path], unsafe_no_sandbox=True) is None
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage() for r in warnings] == [UNSAFE_WARNING, UNSAFE_WARNING]
    assert "UNSANDBOXED" in UNSAFE_WARNING and "identity key" in UNSAFE_WARNING


def test_without_opt_out_a_missing_sandbox_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable):
        receiver_sandbox([tmp_path], unsafe_no_sandbox=False, program=str(tmp_path / "none"))


# -- real esphome inside the sandbox -------------------------------------------------

THIEF_COMPONENT = '''\
"""An external component that steals at import, as esphome config imports it."""
from pathlib import Path

import esphome.config_validation as cv

for target in {targets!r}:
    try:
        print("THIEF GOT", target, Path(target).read_text()[:80])
    except OSError as exc:
        print("THIEF DENIED", target, exc.errno)

CONFIG_SCHEMA = cv.Schema({{}})


async def to_code(config):
    pass
'''


async def test_real_esphome_config_runs_a_thief_component_that_gets_nothing(
    sandbox: Sandbox, receiver_dir: ReceiverDir, esphome_env: dict[str, str]
) -> None:
    workdir = receiver_dir.workdir()
    targets = [str(p) for p in receiver_dir.secrets.values()]
    component = workdir / "components" / "thief"
    component.mkdir(parents=True)
    (component / "__init__.py").write_text(THIEF_COMPONENT.format(targets=targets))
    config = workdir / "garage.yaml"
    config.write_text(
        "esphome:\n  name: garage\nhost:\nlogger:\n"
        "external_components:\n  - source:\n      type: local\n      path: components\n"
        "thief:\n"
    )
    toolchain = sandbox.wrap(Toolchain(esphome=(ESPHOME,), env=esphome_env), receiver_dir.area)
    lines: list[str] = []
    result = await toolchain.run(
        toolchain.esphome_argv("config", str(config)), on_line=lines.append, on_start=None
    )
    output = "\n".join(lines)
    assert result.returncode == 0, output
    assert output.count("THIEF DENIED") == len(targets), output
    assert "THIEF GOT" not in output and "SECRET" not in output


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.slow
async def test_real_esphome_compiles_an_honest_config_and_the_firmware_runs(
    sandbox: Sandbox,
    receiver_dir: ReceiverDir,
    esphome_env: dict[str, str],
    offline_pio_core: Path,
    loopback_shim: Path,
    tmp_path: Path,
) -> None:
    """The offline PlatformIO core is lent read-only; the build writes only its own places."""
    if shutil.which("g++") is None:
        pytest.skip("the host platform needs g++ (and libssl-dev)")
    area = SandboxArea(
        receiver_dir.area.workdir,
        receiver_dir.area.home,
        receiver_dir.area.pio_core,
        offline_pio_core,
    )
    area.prepare()
    port = free_port()
    config = area.workdir / "garage.yaml"
    config.write_text(host_yaml(name="meshd-sandboxed", port=port, password="pw", marker="S"))
    shared_before = _tree_state(offline_pio_core)
    toolchain = sandbox.wrap(Toolchain(esphome=(ESPHOME,), env=esphome_env), area)
    record = make_job(JobType.COMPILE, config)
    failed = await run_job(make_runners(toolchain)[JobType.COMPILE], record)
    assert failed is None, record.text[-3000:]
    assert any(line.startswith("Linking ") for line in record.lines)
    assert _tree_state(offline_pio_core) == shared_before
    assert (area.pio_core / "appstate.json").is_file()  # PlatformIO's state: private
    program = area.workdir / ".esphome" / "build" / "meshd-sandboxed" / ".pioenvs"
    program = program / "meshd-sandboxed" / "program"
    device = HostDevice(program, tmp_path / "device", port=port, shim=loopback_shim)
    try:
        await asyncio.to_thread(device.start)
        await asyncio.to_thread(device.wait_for, "meshd build marker S")
    finally:
        device.stop()
