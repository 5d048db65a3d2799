"""The status page in a real browser: Debian's chromium driven by Playwright, against a
real ``meshd serve`` (stand-in esphome), jobs queued through the CLI.

Nothing is downloaded: Playwright uses ``/usr/bin/chromium`` (never ``playwright
install``). Screenshots go to ``tests/ui/artifacts/`` for a person to look at.
Waits are Playwright's bounded waits on page conditions, never sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import identity, link, node, until, wait_peer
from tests.daemon.conftest import Meshd, MeshdFactory, host_config
from tests.support.host_device import free_port
from tests.ui.conftest import login_url

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000  # safety net against hangs, not a speed assertion

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: sync_api.Browser) -> Iterator[sync_api.Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert errors == [], f"the page raised: {errors}"


def open_page(page: sync_api.Page, daemon: Meshd) -> None:
    """Log in with a fresh ``meshd ui`` link; the address bar ends at ``/``, ticket-free."""
    page.goto(login_url(daemon)["url"])
    assert page.url == f"{daemon.url}/"
    wait_live(page)


def wait_live(page: sync_api.Page) -> None:
    page.wait_for_selector("#conn[data-state='live']")


def job_item(page: sync_api.Page, where: str, job_id: str, status: str | None = None) -> str:
    selector = f"{where} li[data-job='{job_id}']" + (f"[data-status='{status}']" if status else "")
    page.wait_for_selector(selector)
    return selector


def progress_of(page: sync_api.Page, job_id: str) -> int:
    value = page.get_attribute(
        f"#lane-compile li[data-job='{job_id}'] [role='progressbar']", "aria-valuenow"
    )
    return int(value) if value is not None else -1


def test_a_job_from_the_cli_shows_live_and_cancel_works(
    meshd: MeshdFactory, page: sync_api.Page, tmp_path: Path, artifacts: Path
) -> None:
    daemon = meshd().start()
    open_page(page, daemon)
    assert page.text_content("[data-fact='esphome']") == "2026.6.5"
    page.wait_for_selector("#queue-list .empty")
    # No /api/v1/devices yet (404): the fleet section stays hidden until the fleet lands.
    assert page.is_hidden("#fleet")

    # An install queued on the command line appears, moves, and ends, with no reload.
    config = host_config(tmp_path / "cfg", "kitchen", compile_seconds=6)
    ids = daemon.cli_json("install", str(config), "--device", "127.0.0.1", "--detach")
    job_item(page, "#lane-compile", ids["compile"], "running")
    page.wait_for_function(
        "id => Number(document.querySelector(`#lane-compile li[data-job='${id}'] "
        "[role='progressbar']`)?.getAttribute('aria-valuenow')) > 0",
        arg=ids["compile"],
    )
    first = progress_of(page, ids["compile"])
    page.screenshot(path=str(artifacts / "compile-running.png"), full_page=True)
    page.wait_for_function(
        "([id, first]) => { const bar = document.querySelector("
        "`#lane-compile li[data-job='${id}'] [role='progressbar']`);"
        " return !bar || Number(bar.getAttribute('aria-valuenow')) > first; }",
        arg=[ids["compile"], first],
    )
    job_item(page, "#history-list", ids["compile"], "completed")
    job_item(page, "#history-list", ids["upload"], "completed")
    assert daemon.job(ids["upload"])["status"] == "completed"
    page.screenshot(path=str(artifacts / "install-completed.png"), full_page=True)

    # A failure shows with its reason, and retry submits the chain again.
    broken = host_config(tmp_path / "cfg", "broken", compile_fail=1, compile_seconds=0.2)
    failed = daemon.cli_json("install", str(broken), "--device", "127.0.0.1", "--detach")
    item = job_item(page, "#history-list", failed["compile"], "failed")
    assert "esphome compile failed" in (page.text_content(f"{item} [data-role='error']") or "")
    page.click(f"{item} button[data-action='retry install']")
    page.wait_for_function(
        "n => document.querySelectorAll(\"#history-list li[data-status='failed']\").length > n",
        arg=1,
    )
    jobs = daemon.cli_json("jobs")["jobs"]
    retried = [j for j in jobs if j["configuration"] == str(broken)]
    assert [j["type"] for j in retried] == ["compile", "upload", "compile", "upload"]
    assert retried[3]["depends_on"] == retried[2]["id"]

    # The cancel button cancels a running compile.
    slow = host_config(tmp_path / "cfg", "slow", compile_seconds=120)
    running = daemon.cli_json("compile", str(slow), "--detach")["compile"]
    item = job_item(page, "#lane-compile", running, "running")
    page.click(f"{item} button[data-action='cancel']")
    job_item(page, "#history-list", running, "cancelled")
    assert daemon.job(running)["status"] == "cancelled"


def test_the_page_reconnects_after_a_daemon_restart(
    meshd: MeshdFactory, page: sync_api.Page, tmp_path: Path, artifacts: Path
) -> None:
    # A fixed API port: the page knows only its own origin.
    daemon = meshd(args=("--api", f"127.0.0.1:{free_port()}")).start()
    open_page(page, daemon)
    assert daemon.terminate() == 0
    page.wait_for_selector("#conn[data-state='reconnecting']")
    page.screenshot(path=str(artifacts / "reconnecting.png"), full_page=True)

    daemon.start()
    wait_live(page)  # by itself: no reload, and the cookie survived the restart
    config = host_config(tmp_path / "cfg", "after", compile_seconds=0.5)
    job_id = daemon.cli_json("compile", str(config), "--detach")["compile"]
    job_item(page, "#history-list", job_id, "completed")


def test_a_remote_compile_shows_its_receiver_and_why(
    meshd: MeshdFactory, page: sync_api.Page, tmp_path: Path, artifacts: Path
) -> None:
    desk = node(meshd, "desk", "--no-offload", "--no-mdns")
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns", "--no-include-local")
    _, desk_fp = link(pi, desk)
    wait_peer(pi, desk_fp, connected=True, idle=True)
    open_page(page, pi)
    peer = page.wait_for_selector(f"#peers-list li[data-peer='{desk_fp}']")
    assert peer is not None
    assert "connected" in (peer.text_content() or "") and "trusted" in (peer.text_content() or "")

    # A compile that fails on the receiver: the history says where and why.
    broken = host_config(tmp_path / "cfg", "porch", compile_fail=1, compile_seconds=0.2)
    failed = pi.cli_json("compile", str(broken), "--detach")["compile"]
    item = job_item(page, "#history-list", failed, "failed")
    assert "on desk" in (page.text_content(f"{item} [data-role='where']") or "")
    assert "esphome compile failed" in (page.text_content(f"{item} [data-role='error']") or "")

    config = host_config(tmp_path / "cfg", "garage", compile_seconds=8)
    ids = pi.cli_json("install", str(config), "--device", "127.0.0.1", "--detach")
    item = job_item(page, "#lane-compile", ids["compile"], "running")
    where = page.text_content(f"{item} [data-role='where']") or ""
    assert "on desk" in where, where
    assert pi.job(ids["compile"])["reason"] in where
    # The receiver turned busy, pushed over the link and bridged to the page's websocket.
    page.wait_for_function(
        "fp => document.querySelector(`#peers-list li[data-peer='${fp}']`)"
        "?.textContent.includes('busy')",
        arg=desk_fp,
    )
    page.wait_for_function(
        "id => Number(document.querySelector(`#lane-compile li[data-job='${id}'] "
        "[role='progressbar']`)?.getAttribute('aria-valuenow')) >= 40",
        arg=ids["compile"],
    )
    page.screenshot(path=str(artifacts / "remote-compile.png"), full_page=True)
    phone = page.context.browser.new_context(viewport={"width": 390, "height": 844})  # type: ignore[union-attr]
    try:
        small = phone.new_page()
        small.set_default_timeout(WAIT_MS)
        small.goto(login_url(pi)["url"])
        wait_live(small)
        # Running or already done (a loaded machine): the job is on the page either way.
        small.wait_for_selector(f"li[data-job='{ids['compile']}']")
        width = small.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
        small.screenshot(path=str(artifacts / "phone.png"), full_page=True)
    finally:
        phone.close()
    job_item(page, "#history-list", ids["upload"], "completed")
    assert identity(desk)["fingerprint"] == desk_fp
    page.screenshot(path=str(artifacts / "remote-completed.png"), full_page=True)


def test_a_missing_esphome_is_a_warning_on_the_page(
    meshd: MeshdFactory, page: sync_api.Page, artifacts: Path
) -> None:
    daemon = meshd(esphome="/nonexistent/esphome").start()
    # The version probe runs in the background; the warning is there once it answered.
    until("probe", lambda: daemon.cli_json("status")["node"]["warnings"])
    open_page(page, daemon)
    warning = page.wait_for_selector("#warnings .warning")
    assert warning is not None
    text = warning.text_content() or ""
    assert "esphome cannot be run" in text and "--esphome" in text
    assert page.text_content("[data-fact='esphome']") == "not available"
    page.screenshot(path=str(artifacts / "esphome-missing.png"), full_page=True)
