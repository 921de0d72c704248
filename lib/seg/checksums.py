"""Checksums of the segmentation service's upload parts: CRC32C by default, SHA-256 accepted.

A part's checksum is there to catch a part damaged on its way, so that this part alone is sent again; what proves
the file arrived as it left is the whole file's SHA-256, given at ``init`` and checked by the server before
``complete`` makes the file. CRC32C (Castagnoli: what S3 and Google Cloud Storage check parts with) does the
first job at ~10 GB/s on this host's SSE4.2 code (google-crc32c) against SHA-256's 1.6 GB/s; with SHA-256 for
parts too, the client and the server each hashed every byte twice, and that second pass was the difference
between the upload's speed and a plain ``curl --upload-file`` (docs/segmentation.md, the figures).

A part names its checksum in its header: ``X-Part-CRC32C`` (8 hex digits, big-endian) or ``X-Part-SHA256``
(64 hex digits); given both, both are checked.
"""

from __future__ import annotations

import hashlib
import re

import google_crc32c

HEADERS = {"crc32c": "X-Part-CRC32C", "sha256": "X-Part-SHA256"}
DEFAULT = "crc32c"
DIGITS = {"crc32c": 8, "sha256": 64}  # hex digits of each algorithm's digest
_FORMS = {algorithm: re.compile(f"[0-9a-f]{{{digits}}}") for algorithm, digits in DIGITS.items()}


class PartHash:
    """A running checksum of ``algorithm`` (``update``, then ``hexdigest``)."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._hash = google_crc32c.Checksum() if algorithm == "crc32c" else hashlib.sha256()

    def update(self, data) -> None:
        if self.algorithm == "crc32c" and type(data) is not bytes:
            data = bytes(data)  # google-crc32c takes bytes only (a copy; the upload path hands it bytes)
        self._hash.update(data)

    def hexdigest(self) -> str:
        value = self._hash.hexdigest()
        return value.decode() if isinstance(value, bytes) else value


def part_digest(algorithm: str, data) -> str:
    """``algorithm``'s hex digest of ``data``."""
    running = PartHash(algorithm)
    running.update(data)
    return running.hexdigest()


def well_formed(algorithm: str, value: object) -> str | None:
    """``value`` as ``algorithm``'s lower-case hex digest, or None when it is not one."""
    text = str(value or "").strip().lower()
    return text if _FORMS[algorithm].fullmatch(text) else None


def record(algorithm: str, value: str) -> str:
    """How a held part's checksum is written on the server (``crc32c:1a2b3c4d``)."""
    return f"{algorithm}:{value}"


def parse_record(text: str) -> tuple[str, str]:
    """``(algorithm, value)`` of a ``record``; a bare 64-hex record (before CRC32C) is a SHA-256."""
    algorithm, _, value = text.strip().rpartition(":")
    return (algorithm or "sha256"), value
