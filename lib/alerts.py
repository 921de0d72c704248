"""Who hears about failures: the alert rules, the channels (e-mail over SMTP, a webhook) and sending an e-mail.

The rules are the events a lab must hear about. ``labpipe up`` turns each enabled rule into a Prefect
automation (deployments/alerts.py) whose actions send a notification through the configured channels
(labpipe.blocks.alerts). This module holds no Prefect code: the rules are data, and ``send_email`` is plain
smtplib, used by the e-mail notification block and testable alone.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

from labpipe.errors import ConfigError, ToolError
from pydantic import BaseModel, Field, SecretStr, model_validator


@dataclass(frozen=True)
class AlertRule:
    name: str
    description: str
    events: tuple[str, ...]  # event names (a trailing * matches a prefix)
    resource: str  # prefect.resource.id pattern
    subject: str  # Jinja, rendered by Prefect with the event (and the flow run for flow-run events)


_EVENT_BODY = (
    "{{ event.event }} at {{ event.occurred }}\nresource: {{ event.resource.id }}\npayload: {{ event.payload }}\n"
)

RULES: dict[str, AlertRule] = {
    r.name: r
    for r in (
        AlertRule(
            "flow-run-failed",
            "A flow run failed or crashed (any lifecycle; a failed borg check fails its run too).",
            ("prefect.flow-run.Failed", "prefect.flow-run.Crashed"),
            "prefect.flow-run.*",
            "labpipe: flow run {{ event.resource.name }} {{ event.event.split('.')[-1] }}",
        ),
        AlertRule(
            "backup-failed",
            "A nightly backup ended failed (labpipe.backup.failed).",
            ("labpipe.backup.failed",),
            "labpipe.backup.*",
            "labpipe: backup failed ({{ event.resource.id }})",
        ),
        AlertRule(
            "check-failed",
            "A borg check found problems (labpipe.backup.check-failed).",
            ("labpipe.backup.check-failed",),
            "labpipe.backup.*",
            "labpipe: borg check failed ({{ event.resource.id }})",
        ),
        AlertRule(
            "disk-critical",
            "A watched disk crossed its critical threshold (labpipe.disk.critical).",
            ("labpipe.disk.critical",),
            "labpipe.disk.*",
            "labpipe: disk critical ({{ event.resource.id }})",
        ),
        AlertRule(
            "calibration-missing",
            "A radio group is held: no valid calibration (labpipe.radio.calibration.missing).",
            ("labpipe.radio.calibration.missing",),
            "labpipe.radio.group.*",
            "labpipe: radio calibration missing for {{ event.resource.id }}",
        ),
        AlertRule(
            "vm-failed",
            "A VM went into its failed state (labpipe.vm.failed).",
            ("labpipe.vm.failed",),
            "labpipe.vm.*",
            "labpipe: VM {{ event.resource.name }} failed",
        ),
    )
}


def body_template(rule: AlertRule) -> str:
    """The notification body (Jinja, rendered by Prefect)."""
    return f"{rule.description}\n\n{_EVENT_BODY}"


class SmtpSettings(BaseModel):
    """How to reach the lab's mail server."""

    host: str = Field("127.0.0.1", description="SMTP server host.")
    port: int = Field(25, description="SMTP server port (25, 587 with starttls, 465 with ssl).")
    security: Literal["none", "starttls", "ssl"] = Field(
        "starttls", description="none (a relay on loopback only), starttls or ssl."
    )
    username: str | None = Field(None, description="Login; empty: no authentication.")
    password: SecretStr | None = Field(None, description="Password of the login.")
    sender: str = Field("labpipe@localhost", description="From: address.")
    timeout_s: float = Field(20.0, description="Connection timeout.")


class AlertSettings(BaseModel):
    """Who is told about failures, and of which kinds (block ``LabAlerts``)."""

    email_to: list[str] = Field(default_factory=list, description="Recipients of alert e-mails; empty: no e-mail.")
    smtp: SmtpSettings = Field(default_factory=SmtpSettings, description="The mail server alerts are sent through.")
    webhook_url: str | None = Field(
        None, description="URL receiving a JSON POST {subject, body} per alert (a chat bridge, a pager); empty: none."
    )
    webhook_headers: dict[str, str] = Field(default_factory=dict, description="Extra headers of the webhook request.")
    rules: list[str] = Field(default_factory=lambda: list(RULES), description=f"Enabled rules, of {list(RULES)}.")

    @model_validator(mode="after")
    def _known_rules(self):
        unknown = sorted(set(self.rules) - set(RULES))
        if unknown:
            raise ValueError(f"unknown alert rules {unknown}; known: {list(RULES)}")
        return self

    @property
    def channels(self) -> list[str]:
        return (["email"] if self.email_to else []) + (["webhook"] if self.webhook_url else [])


def send_email(smtp: SmtpSettings, recipients: list[str], subject: str, body: str) -> None:
    """Send one plain-text e-mail; ToolError naming the server when it cannot be delivered."""
    if not recipients:
        raise ConfigError("alert e-mail", "no recipients", "set email_to in the LabAlerts block")
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = smtp.sender, ", ".join(recipients), subject
    message.set_content(body)
    where = f"smtp {smtp.host}:{smtp.port}"
    try:
        if smtp.security == "ssl":
            context = ssl.create_default_context()
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout_s, context=context)
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if smtp.username:
                client.login(smtp.username, smtp.password.get_secret_value() if smtp.password else "")
            client.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise ToolError(where, f"could not send the alert e-mail: {exc}", "check the LabAlerts block's smtp") from exc
