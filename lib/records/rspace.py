"""A session's ingest summary appended to its user's RSpace notebook entry, when one is configured.

Uses RSpace's own client (``rspace-client``: ``ELNClient.get_status`` and
``append_content``, which reads the document and writes its first field back with the
summary appended: ``GET``/``PUT /api/v1/documents/{id}``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from labpipe.optional import require
from labpipe.records.pyrat import ServiceUnavailable
from labpipe.records.settings import RSpaceSettings


@dataclass
class SessionSummary:
    """What the notebook entry says about one ingested session."""

    username: str
    session_id: str
    folder: str
    scans: int
    files: int
    modalities: dict[str, int]
    outcome: str

    def html(self) -> str:
        kinds = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(self.modalities.items())) or "none"
        return (
            f"<p><b>labpipe ingest</b> of session <code>{html.escape(self.session_id)}</code> "
            f"({html.escape(self.folder)}): {html.escape(self.outcome)}; {self.scans} scans, {self.files} files; "
            f"by kind {kinds}.</p>"
        )


def _client(settings: RSpaceSettings):
    ELNClient = require("rspace_client.eln.eln", "records", "RSpace summaries").ELNClient
    return ELNClient(settings.url, settings.api_key.get_secret_value(), timeout=settings.timeout_s, max_retries=0)


def post_summary(settings: RSpaceSettings | None, summary: SessionSummary) -> str | None:
    """Append ``summary`` to the user's entry; the document id written, or None when none is configured."""
    if settings is None or summary.username not in settings.entries:
        return None
    document = settings.entries[summary.username]
    client = _client(settings)
    try:
        client.append_content(document, summary.html())
    except Exception as exc:
        raise ServiceUnavailable(
            f"RSpace {settings.url}",
            f"could not append to document {document}: {type(exc).__name__}: {exc}",
            "the ingest itself succeeded; the summary can be posted again",
        ) from exc
    finally:
        client.close()
    return str(document)


def _modalities(scans: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for scan in scans:
        for raw in scan.get("files", []):
            counts[raw["modality"]] = counts.get(raw["modality"], 0) + 1
    return counts


def summaries_of(report) -> list[SessionSummary]:
    """One summary per session an ``IngestReport`` inserted or updated."""
    out = []
    for session in report.sessions:
        scans = session.get("scans", [])
        out.append(
            SessionSummary(
                username=session["username"],
                session_id=session["session_id"],
                folder=session["folder"],
                scans=len(scans),
                files=sum(len(scan.get("files", [])) for scan in scans),
                modalities=_modalities(scans),
                outcome=report.status,
            )
        )
    return out
