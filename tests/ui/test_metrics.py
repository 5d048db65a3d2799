"""``/metrics`` scraped from real daemons after real installs (stand-in esphome), parsed
with prometheus-client's own parser: counters and histograms must have moved."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from meshd.api.metrics import Metrics, event_json, tcp_byte_counts
from meshd.api.state import NodeFacts
from meshd.jobs.engine import Engine
from meshd.jobs.events import JobFinished
from meshd.jobs.model import Job, JobStatus, JobType
from tests.cluster.conftest import link, node, until, wait_peer
from tests.daemon.conftest import Meshd, MeshdFactory, host_config

WAIT = 60.0  # safety net


def scrape(url: str, token: str | None = None) -> dict[str, list[Sample]]:
    """Every sample by metric family name, as Prometheus would read it."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    families: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        families.setdefault(family.name, []).extend(family.samples)
    return families


def value(families: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """The one sample called ``name`` whose labels include ``labels`` (0 if none)."""
    family = re.sub(r"(_total|_count|_sum|_bucket|_created)$", "", name)
    matches = [
        s
        for s in families.get(family, [])
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) <= 1, matches
    return matches[0].value if matches else 0.0


def test_local_installs_move_counters_and_histograms(meshd: MeshdFactory, tmp_path: Path) -> None:
    daemon = meshd(args=("--metrics-listen", "127.0.0.1:0")).start()
    before = scrape(f"{daemon.url}/metrics", daemon.token)
    assert value(before, "meshd_jobs_total", type="compile", status="completed") == 0
    # The placeholders exist (0) before their features do.
    assert value(before, "meshd_armed_uploads") == 0
    assert value(before, "meshd_devices", state="online") == 0
    assert value(before, "meshd_toolchain_provisions_total", outcome="failed") == 0
    assert "meshd_sandbox_refusals" in before
    assert value(before, "meshd_info", version="0.1.0") == 1

    for name in ("one", "two"):
        config = host_config(tmp_path / "cfg", name, compile_seconds=1, upload_seconds=0.5)
        result = daemon.cli("install", str(config), "--device", "127.0.0.1")
        assert result.returncode == 0, result.stderr
    broken = host_config(tmp_path / "cfg", "broken", compile_fail=1)
    assert daemon.cli("install", str(broken), "--device", "127.0.0.1").returncode == 1

    after = scrape(f"{daemon.url}/metrics", daemon.token)
    assert value(after, "meshd_jobs_total", type="compile", status="completed") == 2
    assert value(after, "meshd_jobs_total", type="upload", status="completed") == 2
    assert value(after, "meshd_jobs_total", type="compile", status="failed") == 1
    assert value(after, "meshd_jobs_total", type="upload", status="cancelled") == 1
    assert value(after, "meshd_compile_duration_seconds_count", runner="local") == 2
    assert value(after, "meshd_compile_duration_seconds_sum", runner="local") >= 2.0
    # The stand-in compile takes 1 s: it is not in the 0.5 s... bucket of uploads, and
    # every compile is within the largest finite compile bucket.
    assert value(after, "meshd_compile_duration_seconds_bucket", runner="local", le="1.0") == 0
    assert value(after, "meshd_compile_duration_seconds_bucket", runner="local", le="3600.0") == 2
    assert value(after, "meshd_upload_duration_seconds_count") == 2
    assert value(after, "meshd_lane_busy_seconds_total", lane="compile") >= 2.0
    assert value(after, "meshd_lane_busy_seconds_total", lane="upload") > 0
    assert value(after, "meshd_queue_depth", lane="compile") == 0
    assert value(after, "meshd_lane_slots", lane="upload") == 4
    assert value(after, "meshd_remote_dispatches_total") == 0

    # The separate listener serves the same metrics without a token...
    match = re.search(r"metrics listening on (http://\S+)", daemon.log())
    assert match, daemon.log()
    separate = scrape(match.group(1))
    assert value(separate, "meshd_jobs_total", type="compile", status="completed") == 2
    # ...while the API's /metrics still wants one.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{daemon.url}/metrics", timeout=WAIT)
    assert refused.value.code == 401
    refused.value.close()


def test_queue_depth_and_busy_time_while_jobs_wait(daemon: Meshd, tmp_path: Path) -> None:
    running = host_config(tmp_path / "cfg", "long", compile_seconds=30)
    first = daemon.cli_json("compile", str(running), "--detach")["compile"]
    waiting = [
        daemon.cli_json("compile", str(host_config(tmp_path / "cfg", f"w{i}")), "--detach")
        for i in range(2)
    ]
    daemon.wait_status(first, "running")
    families = scrape(f"{daemon.url}/metrics", daemon.token)
    assert value(families, "meshd_queue_depth", lane="compile") == 2
    assert value(families, "meshd_lane_running", lane="compile") == 1
    busy = value(families, "meshd_lane_busy_seconds_total", lane="compile")
    # Busy time counts while the lane is busy, not only when it turns idle again.
    until(
        "busy seconds grow",
        lambda: (
            value(
                scrape(f"{daemon.url}/metrics", daemon.token),
                "meshd_lane_busy_seconds_total",
                lane="compile",
            )
            > busy
        ),
    )
    for job in (first, *(w["compile"] for w in waiting)):
        assert daemon.cli("cancel", job).returncode == 0


@pytest.mark.slow
def test_remote_installs_count_dispatches_and_link_bytes(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    desk = node(meshd, "desk", "--no-offload", "--no-mdns")
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns", "--no-include-local")
    _, desk_fp = link(pi, desk)
    wait_peer(pi, desk_fp, connected=True, idle=True)
    before = scrape(f"{pi.url}/metrics", pi.token)
    assert value(before, "meshd_peers_connected") == 1
    assert value(before, "meshd_peers_idle") == 1
    sent_before = value(before, "meshd_peer_link_sent_bytes_total", peer=desk_fp)

    config = host_config(tmp_path / "cfg", "kitchen", compile_seconds=1)
    assert pi.cli("install", str(config), "--device", "127.0.0.1").returncode == 0
    broken = host_config(tmp_path / "cfg", "broken", compile_fail=1)
    assert pi.cli("install", str(broken), "--device", "127.0.0.1").returncode == 1

    after = scrape(f"{pi.url}/metrics", pi.token)
    assert value(after, "meshd_remote_dispatches_total", peer=desk_fp, outcome="completed") == 1
    assert value(after, "meshd_remote_dispatches_total", peer=desk_fp, outcome="failed") == 1
    assert value(after, "meshd_compile_duration_seconds_count", runner="remote") == 1
    assert value(after, "meshd_compile_duration_seconds_count", runner="local") == 0
    # The bundle went out and the artifacts came back over the link.
    assert value(after, "meshd_peer_link_sent_bytes_total", peer=desk_fp) > sent_before + 500
    assert value(after, "meshd_peer_link_received_bytes_total", peer=desk_fp) > 1000
    # The receiver ran them as its own local jobs.
    receiver = scrape(f"{desk.url}/metrics", desk.token)
    assert value(receiver, "meshd_jobs_total", type="compile", status="completed") == 1
    assert value(receiver, "meshd_compile_duration_seconds_count", runner="local") == 1

    # A receiver lost mid-compile: one re-route, charged to it.
    slow = host_config(tmp_path / "cfg", "slow", compile_seconds=60)
    ids = pi.cli_json("install", str(slow), "--device", "127.0.0.1", "--detach")
    until("remote compile running", lambda: pi.job(ids["compile"])["runner"] == desk_fp)
    desk.kill()
    until(
        "re-route counted",
        lambda: value(scrape(f"{pi.url}/metrics", pi.token), "meshd_reroutes_total", peer=desk_fp),
    )
    families = scrape(f"{pi.url}/metrics", pi.token)
    assert value(families, "meshd_remote_dispatches_total", peer=desk_fp, outcome="rerouted") == 1
    until(
        "peer disconnected",
        lambda: value(scrape(f"{pi.url}/metrics", pi.token), "meshd_peers_connected") == 0,
    )
    # Totals survive the session's end.
    final = scrape(f"{pi.url}/metrics", pi.token)
    assert value(final, "meshd_peer_link_sent_bytes_total", peer=desk_fp) >= value(
        after, "meshd_peer_link_sent_bytes_total", peer=desk_fp
    )
    assert pi.cli("cancel", ids["compile"]).returncode == 0


def test_event_adapter_and_link_totals(tmp_path: Path) -> None:
    """The bus adapter reads events as their websocket JSON; link totals add sessions."""
    engine = Engine(tmp_path, {})
    sessions: list[tuple[str, bytes, int, int]] = [("fp", b"s1", 100, 200)]
    metrics = Metrics(
        engine, NodeFacts("n", "0.1.0", str(tmp_path)), link_bytes=lambda: list(sessions)
    )
    try:
        job = Job(type=JobType.CLEAN, configuration="/c/x.yaml", status=JobStatus.FAILED)
        job.runner = "local"
        event = JobFinished(job)
        assert event_json(event) == {"type": "job_failed", "job": job.to_dict()}
        metrics.observe(event_json(event))
        families = {
            f.name: f.samples for f in text_string_to_metric_families(metrics.render().decode())
        }
        assert value(families, "meshd_jobs_total", type="clean", status="failed") == 1
        assert value(families, "meshd_peer_link_sent_bytes_total", peer="fp") == 100
        sessions[:] = [("fp", b"s2", 5, 7)]  # a new session starts counting from 0
        families = {
            f.name: f.samples for f in text_string_to_metric_families(metrics.render().decode())
        }
        assert value(families, "meshd_peer_link_sent_bytes_total", peer="fp") == 105
        assert value(families, "meshd_peer_link_received_bytes_total", peer="fp") == 207
        # Malformed events are ignored, never raised.
        for junk in ({}, {"type": "job_completed"}, {"type": "lane_status", "lane": "x"}):
            metrics.observe(junk)
    finally:
        metrics.close()
        engine.store.close()
    assert tcp_byte_counts(None) is None
