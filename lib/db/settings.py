"""The database connection users configure (mirrored by the ``LabDatabase`` block)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class DatabaseSettings(BaseModel):
    """Which server holds the lab's DataJoint schemas."""

    url: SecretStr | None = Field(
        None,
        description="postgresql://user:pass@host:5432/db or mysql://user:pass@host:3306; "
        "empty: the embedded PostgreSQL under $LABPIPE_HOME/pg.",
    )
    schema_prefix: str = Field("labpipe", description="Prefix of every DataJoint schema labpipe declares.")
