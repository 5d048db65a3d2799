"""Every event's websocket text is its documented JSON object, encoded once per event."""

from __future__ import annotations

import json

from meshd.jobs import events
from meshd.jobs.lanes import LaneSnapshot
from meshd.jobs.model import Job, JobStatus, JobType, LaneName


def test_wire_text_is_the_json_of_to_wire_and_is_encoded_once() -> None:
    job = Job(JobType.COMPILE, "/cfg/a.yaml", device="10.0.0.7")
    done = Job(JobType.UPLOAD, "/cfg/a.yaml", device="10.0.0.7", status=JobStatus.FAILED)
    lane = LaneSnapshot(LaneName.COMPILE, False, ("j1",), 3, None, 1, remote=("j1",))
    every = [
        events.JobQueued(job),
        events.JobStarted(job),
        events.JobOutput(job, "Compiling .pioenvs/a/src/main.o — “quoted”"),
        events.JobProgress(job, 0.5),
        events.JobFinished(done),
        events.LaneStatusChanged(lane),
        events.PeerChanged("updated", "ab" * 32, {"name": "desk", "trusted": True}),
        events.PeerChanged("removed", "ab" * 32, None),
    ]
    for event in every:
        text = event.wire_text
        assert json.loads(text) == event.to_wire()
        assert text == json.dumps(event.to_wire())  # what aiohttp's send_json sent
        assert event.wire_text is text  # one encoding, however many followers
    # The cache is not a field: equal events stay equal, encoded or not.
    assert events.JobQueued(job) == every[0]
