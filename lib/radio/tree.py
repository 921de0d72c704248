"""The radio tree (``Layout.radio``), laid out as the DSA-110 directory architecture says.

::

    <radio>/incoming/                          subband files land here (flat)
    <radio>/ms/science/YYYY-MM-DD/<group>.ms
    <radio>/ms/calibrators/YYYY-MM-DD/<group>.ms
    <radio>/ms/failed/YYYY-MM-DD/<group>.ms + <group>.log     quarantine for review
    <radio>/images/{single,mosaics,qa}/
    <radio>/static/catalogs/                   calibrators.csv, NVSS-like sky catalogs
    <radio>/tmp/staging/<group_fs_safe>/       in-progress conversions (same file system as ms/)
    <radio>/tmp/parts/
    <radio>/archive/{ms,images,catalogs}/

``<group>`` is the ISO timestamp ``YYYY-MM-DDTHH:MM:SS`` of the group's earliest file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from labpipe.radio.naming import date_folder, fs_safe

MsKind = Literal["science", "calibrators", "failed"]


@dataclass(frozen=True)
class RadioTree:
    root: Path

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def ms(self) -> Path:
        return self.root / "ms"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def catalogs(self) -> Path:
        return self.root / "static" / "catalogs"

    @property
    def staging(self) -> Path:
        return self.root / "tmp" / "staging"

    @property
    def parts(self) -> Path:
        return self.root / "tmp" / "parts"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    def ensure(self) -> RadioTree:
        for folder in (
            self.incoming,
            self.ms / "science",
            self.ms / "calibrators",
            self.ms / "failed",
            self.images / "single",
            self.images / "mosaics",
            self.images / "qa",
            self.catalogs,
            self.root / "static" / "config",
            self.staging,
            self.parts,
            self.archive / "ms",
            self.archive / "images",
            self.archive / "catalogs",
        ):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def ms_path(self, kind: MsKind, group: str) -> Path:
        """``ms/<kind>/YYYY-MM-DD/<group>.ms``."""
        return self.ms / kind / date_folder(group) / f"{group}.ms"

    def failed_log(self, group: str) -> Path:
        return self.ms / "failed" / date_folder(group) / f"{group}.log"

    def group_workspace(self, group: str) -> Path:
        return self.staging / fs_safe(group)

    def relative(self, path: Path) -> str:
        """A path inside the tree as stored in the database (the tree moves between hosts)."""
        return str(Path(path).relative_to(self.root))
