"""Markdown for run summaries: tables and inline pictures (Prefect artifacts, the CLI, reports)."""

from __future__ import annotations

import base64
import io


def png_markdown(figure, alt: str) -> str:
    """Embed a matplotlib figure in markdown as a PNG data URI (artifacts show it inline)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"![{alt}](data:image/png;base64,{encoded})"


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows as a markdown table (``columns``: which and in what order; default the first row's keys)."""
    if not rows:
        return "_none_\n"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")).replace("|", "\\|") for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
