"""Someone hears about failures: the automations `labpipe up` creates, on the session's Prefect server.

The notifications are sent by the Prefect server's own action service (as in the lab) to a local SMTP server
(aiosmtpd) and a local webhook receiver (http.server), both on loopback.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from labpipe.alerts import RULES, AlertSettings, SmtpSettings
from labpipe.deployments.alerts import PREFIX, ensure_alerts

WITHIN_S = 60.0


@pytest.fixture
def smtp_inbox():
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    inbox: list = []

    class Collect(Message):
        def handle_message(self, message):
            inbox.append(message)

    with socket.socket() as probe:  # aiosmtpd's controller cannot start on port 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Collect(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


@pytest.fixture
def webhook_inbox():
    received: list = []

    class Receive(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    server.shutdown()


def _until(found, what: str):
    deadline = time.monotonic() + WITHIN_S
    while time.monotonic() < deadline:
        if found():
            return
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {WITHIN_S:.0f} s")


def _sync_client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def test_failed_flow_run_and_disk_critical_reach_email_and_webhook(smtp_inbox, webhook_inbox):
    from prefect import flow
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    port, mails = smtp_inbox
    url, posts = webhook_inbox
    settings = AlertSettings(
        email_to=["oncall@lab.example"],
        smtp=SmtpSettings(host="127.0.0.1", port=port, security="none", sender="labpipe@lab.example"),
        webhook_url=url,
    )
    with _sync_client() as client:
        first = ensure_alerts(client, settings)
        again = ensure_alerts(client, settings)  # `up` twice: the same automations, not two of each
        assert first.automations == again.automations == [PREFIX + r for r in RULES]
        assert all(len(client.read_automations_by_name(PREFIX + r)) == 1 for r in RULES)
    time.sleep(2.0)  # the trigger service loads the new automations

    host = f"scratch-{uuid.uuid4().hex[:6]}"
    emit_event(
        event="labpipe.disk.critical",
        resource={"prefect.resource.id": f"labpipe.disk.{host}", "prefect.resource.name": host},
        payload={"free_gb": 12.5},
    )
    EventsWorker.instance().wait_until_empty()

    @flow(name=f"doomed-{uuid.uuid4().hex[:6]}")
    def doomed():
        raise RuntimeError("this run fails on purpose")

    state = doomed(return_state=True)
    assert state.is_failed()

    def has(items, text):
        return any(text in str(item) for item in items)

    _until(lambda: has([m["Subject"] for m in mails], f"disk critical (labpipe.disk.{host})"), "disk e-mail")
    _until(lambda: has([p["subject"] for p in posts], f"labpipe.disk.{host}"), "disk webhook")
    _until(lambda: has([m["Subject"] for m in mails], "Failed"), "failed run e-mail")
    _until(lambda: has([p["subject"] for p in posts], "Failed"), "failed run webhook")
    disk = next(m for m in mails if host in m["Subject"])
    assert disk["To"] == "oncall@lab.example" and "free_gb" in disk.get_payload()


def test_no_channel_removes_the_automations_and_says_so():
    with _sync_client() as client:
        report = ensure_alerts(client, AlertSettings())
        assert report.channels == [] and report.automations == []
        assert all(not client.read_automations_by_name(PREFIX + r) for r in RULES)


def test_unknown_rule_is_refused_naming_it():
    with pytest.raises(ValueError, match="unknown alert rules \\['disk-full'\\]"):
        AlertSettings(rules=["disk-full"])


def test_up_refuses_email_alerts_the_server_could_not_send(monkeypatch):
    """Without labpipe's prefect.collections entry point the server cannot load the e-mail block: say so at `up`."""
    import labpipe.blocks.alerts
    from labpipe.deployments import platform
    from labpipe.errors import ConfigError

    monkeypatch.setattr(labpipe.blocks.alerts, "alert_settings", lambda name: AlertSettings(email_to=["a@lab"]))
    monkeypatch.setattr(platform, "entry_points", lambda group: [])
    with pytest.raises(ConfigError, match="prefect.collections entry point is not installed"):
        platform.ensure_alert_automations()


def test_a_run_whose_heartbeats_stop_is_crashed_and_the_automation_is_made_once():
    """The silent-run automation on the test server: a running flow run that beat once and then fell silent (its
    host died) is marked Crashed by the server after three missed beats (4 s beats here: Prefect wants at least
    10 s of silence; 30 s beats in the lab)."""
    from labpipe.deployments.alerts import SILENT_RUNS, ensure_silent_runs_crash
    from prefect import flow
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.states import Running

    with _sync_client() as client:
        assert ensure_silent_runs_crash(client, 4.0) == ensure_silent_runs_crash(client, 4.0) == SILENT_RUNS
        assert len(client.read_automations_by_name(SILENT_RUNS)) == 1
        time.sleep(2.0)  # the trigger service loads the new automation

        @flow(name=f"silent-{uuid.uuid4().hex[:6]}")
        def silent():
            pass

        run = client.create_flow_run(silent)
        client.set_flow_run_state(run.id, Running())
        emit_event(
            event="prefect.flow-run.heartbeat",
            resource={"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": run.name},
        )
        EventsWorker.instance().wait_until_empty()
        _until(lambda: client.read_flow_run(run.id).state.is_crashed(), "the silent run crashed")
        assert "no heartbeat for 12 s" in client.read_flow_run(run.id).state.message
        assert ensure_silent_runs_crash(client, None) is None  # heartbeats off: no automation
        assert client.read_automations_by_name(SILENT_RUNS) == []
