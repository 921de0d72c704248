"""Alerting blocks: who hears about failures (``LabAlerts``) and the e-mail notification channel (``SmtpEmail``).

``labpipe up`` reads the ``default`` LabAlerts document and creates the notification blocks and automations
(deployments/alerts.py). The Prefect server sends the notifications itself, so it must be able to import
``SmtpEmail``: this module is registered as a ``prefect.collections`` entry point (pyproject.toml), which
Prefect imports before it looks up a block class.
"""

from __future__ import annotations

import asyncio

from labpipe.alerts import AlertSettings, SmtpSettings, send_email
from labpipe.blocks.resolve import resolve
from prefect.blocks.abstract import NotificationBlock, NotificationError
from prefect.blocks.core import Block
from pydantic import Field


class LabAlerts(Block, AlertSettings):
    """Recipients (e-mail, webhook) and which failures are announced."""

    _block_type_name = "labpipe lab alerts"
    _block_type_slug = "labpipe-lab-alerts"
    _description = (
        "Who hears about failures: e-mail recipients and the SMTP server, a webhook URL, and the enabled rules "
        "(flow run failed/crashed, backup failed, check failed, disk critical, calibration missing, VM failed). "
        "`labpipe up` turns them into Prefect automations."
    )


class SmtpEmail(NotificationBlock, SmtpSettings):
    """E-mail notifications through an SMTP server (Prefect's notification block interface)."""

    _block_type_name = "labpipe smtp email"
    _block_type_slug = "labpipe-smtp-email"
    _description = "Sends Prefect notifications (automations' send-notification actions) as e-mail over SMTP."

    email_to: list[str] = Field(default_factory=list, description="Recipients.")

    async def notify(self, body: str, subject: str | None = None) -> None:
        try:
            await asyncio.to_thread(send_email, self, self.email_to, subject or "labpipe", body)
        except Exception as exc:
            if self._raise_on_failure:
                raise NotificationError(str(exc)) from exc
            self.logger.error("alert e-mail not sent: %s", exc)


def alert_settings(name: str | None = "default") -> AlertSettings:
    """The ``LabAlerts`` document ``name``, or no channels (nobody is told: `labpipe up` says so)."""
    return resolve(LabAlerts, name, AlertSettings())


__all__ = ["LabAlerts", "SmtpEmail", "alert_settings"]
