"""The automations ``labpipe up`` creates so that someone hears about failures.

Each enabled rule of labpipe.alerts.RULES becomes one Prefect automation named ``labpipe: <rule>``: an event
trigger (reactive, one event is enough) whose actions send a notification through each configured channel, an
e-mail (labpipe.blocks.alerts.SmtpEmail, block ``labpipe-alerts-email``) and a webhook (Prefect's Custom
Webhook block ``labpipe-alerts-webhook``, a JSON POST ``{subject, body}``). Running it again updates the same
automations and blocks in place (by name); a rule disabled or a lab without channels has its automations
removed, and the report says nobody is told.

A flow run whose host dies never reports its own end: it would stay Running. ``ensure_silent_runs_crash`` adds
the automation that marks a run Crashed once it missed three heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``),
Prefect's recipe for such runs; the Crashed state then reaches the ``flow-run-failed`` rule like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labpipe.alerts import RULES, AlertSettings, body_template

PREFIX = "labpipe: "
SILENT_RUNS = PREFIX + "silent run crashed"  # not an alert rule: a state change, made whoever is told
MISSED_BEATS = 3
EMAIL_BLOCK = "labpipe-alerts-email"
WEBHOOK_BLOCK = "labpipe-alerts-webhook"


@dataclass
class AlertsReport:
    channels: list[str] = field(default_factory=list)
    automations: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _channel_blocks(settings: AlertSettings) -> list:
    """Save the notification blocks of the configured channels; returns their block document ids."""
    from labpipe.blocks.alerts import SmtpEmail
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    ids = []
    if settings.email_to:
        block = SmtpEmail(**settings.smtp.model_dump(), email_to=settings.email_to)
        ids.append(block.save(EMAIL_BLOCK, overwrite=True))
    if settings.webhook_url:
        block = CustomWebhookNotificationBlock(
            name="labpipe alerts",
            url=settings.webhook_url,
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
            headers=settings.webhook_headers or None,
        )
        ids.append(block.save(WEBHOOK_BLOCK, overwrite=True))
    return ids


def automation_for(rule_name: str, block_ids: list):
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    rule = RULES[rule_name]
    trigger = EventTrigger(
        expect=set(rule.events),
        match={"prefect.resource.id": rule.resource},
        posture=Posture.Reactive,
        threshold=1,
        within=0,
    )
    actions = [SendNotification(block_document_id=i, subject=rule.subject, body=body_template(rule)) for i in block_ids]
    return AutomationCore(name=PREFIX + rule.name, description=rule.description, trigger=trigger, actions=actions)


def ensure_alerts(client, settings: AlertSettings) -> AlertsReport:
    """Create or update the alert automations (``client``: a sync Prefect client); idempotent by name."""
    report = AlertsReport(channels=settings.channels)
    block_ids = _channel_blocks(settings)
    wanted = set(settings.rules) if block_ids else set()
    for name in RULES:
        existing = client.read_automations_by_name(PREFIX + name)
        if name not in wanted:
            for automation in existing:
                client.delete_automation(automation.id)
                report.removed.append(automation.name)
            continue
        automation = automation_for(name, block_ids)
        if existing:
            client.update_automation(existing[0].id, automation)
            for extra in existing[1:]:  # a duplicate made by hand or by an interrupted run
                client.delete_automation(extra.id)
        else:
            client.create_automation(automation)
        report.automations.append(automation.name)
    return report


def silent_runs_automation(heartbeat_s: float):
    """Mark a flow run Crashed when ``MISSED_BEATS`` heartbeats pass without one (nor a final state)."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    final = [f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")]
    trigger = EventTrigger(
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.heartbeat", *final},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=MISSED_BEATS * heartbeat_s),
    )
    message = f"no heartbeat for {MISSED_BEATS * heartbeat_s:.0f} s: its host or process died"
    return AutomationCore(
        name=SILENT_RUNS,
        description="A flow run that stopped sending heartbeats (its host died, its process was killed) is crashed.",
        trigger=trigger,
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=message)],
    )


def ensure_silent_runs_crash(client, heartbeat_s: float | None) -> str | None:
    """Create or update the silent-run automation (none when heartbeats are off); its name."""
    existing = client.read_automations_by_name(SILENT_RUNS)
    if not heartbeat_s:
        for automation in existing:
            client.delete_automation(automation.id)
        return None
    automation = silent_runs_automation(heartbeat_s)
    if existing:
        client.update_automation(existing[0].id, automation)
        for extra in existing[1:]:
            client.delete_automation(extra.id)
    else:
        client.create_automation(automation)
    return SILENT_RUNS
