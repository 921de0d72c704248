"""Settings of the PyRAT and RSpace connections (a future block *is* each of these models)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class PyratSettings(BaseModel):
    """Where the lab's PyRAT instance answers and the API tokens labpipe uses (read only)."""

    url: str = Field(description="PyRAT instance, e.g. https://pyrat.example.org/mypyrat (api/v3 is appended).")
    client_token: SecretStr = Field(description="API client token (issued by Scionics, enabled by an admin).")
    user_token: SecretStr = Field(description="API user token ('Request access' under ADMINISTRATION > API).")
    states: list[str] = Field(["live", "sacrificed", "exported"], description="Animal states to read.")
    owner: str | None = Field(None, description="Only animals of this owner (PyRAT full name); empty: all visible.")
    page_size: int = Field(500, ge=1, le=10000, description="Animals per request.")
    timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for PyRAT before calling it unreachable.")


class RSpaceSettings(BaseModel):
    """Which RSpace server and which notebook entry each user's ingest summaries go to."""

    url: str = Field(description="RSpace server, e.g. https://rspace.example.org (api/v1 is appended).")
    api_key: SecretStr = Field(description="The API key of the account that writes the summaries.")
    entries: dict[str, str] = Field(
        default_factory=dict,
        description="Share username -> RSpace document (global id such as SD1234, or number) to append to. "
        "Users without an entry get no summary.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for RSpace before a summary counts as unposted.")
