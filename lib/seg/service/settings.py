"""Where the service keeps its state and the limits it enforces (``labpipe seg serve`` options)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

MB = 1 << 20


class ServiceSettings(BaseModel):
    """The segmentation service's folders and limits; every limit is published by ``GET /v1/server/info``."""

    data: Path = Field(description="Uploads, files and job folders; the gpu workers must see it at the same path.")
    key_file: Path = Field(description="The signing secret of tokens and URLs (mode 0600, created when missing).")
    default_model: str = Field("tiny", description="Model of a job that names none.")
    part_size_min: int = Field(8 * MB, ge=1, description="Smallest upload part (bytes).")
    part_size_max: int = Field(32 * MB, ge=1, description="Largest upload part (bytes).")
    max_upload_bytes: int = Field(16 << 30, ge=1, description="Largest file accepted.")
    upload_max_age_s: float = Field(86400.0, gt=0, description="An upload untouched this long is removed.")
    file_max_age_s: float = Field(
        7 * 86400.0,
        gt=0,
        description="An uploaded file this long unused (completed, or last given a job) is removed, unless a job "
        "on it is queued or running.",
    )
    rate_limit_per_minute: int = Field(60, ge=1, description="Requests per minute per token (upload parts excepted).")
    parts_in_flight: int = Field(4, ge=1, description="Concurrent part uploads per token.")
    signed_url_ttl_s: int = Field(3600, ge=1, description="Lifetime of a signed download URL.")
    keepalive_s: float = Field(20.0, gt=0, description="WebSocket keepalive interval when nothing else is sent.")
    free_disk_reserve_bytes: int = Field(1 << 30, ge=0, description="Free disk an accepted upload must leave.")

    def limits(self) -> dict:
        return {
            "part_size_min": self.part_size_min,
            "part_size_max": self.part_size_max,
            "max_upload_bytes": self.max_upload_bytes,
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "parts_in_flight": self.parts_in_flight,
            "upload_max_age_s": self.upload_max_age_s,
            "file_max_age_s": self.file_max_age_s,
            "signed_url_ttl_s": self.signed_url_ttl_s,
            "keepalive_s": self.keepalive_s,
        }
