"""Where labpipe keeps files: one root per kind of data.

The same fields appear in the ``StorageLayout`` block users edit in the UI;
``Layout.default(home)`` places every root under ``$LABPIPE_HOME``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

ROOT_DESCRIPTIONS: dict[str, str] = {
    "share": "Lab share: <share>/<username>/<session>/<scan>/<raw files> (ADAMACS layout).",
    "staging": "Where acquisition setups drop raw files before consolidation into the share.",
    "blobs": "DataJoint object store for large computed arrays.",
    "dumps": "Database dumps.",
    "radio": "Radio tree (incoming, ms, images, static, tmp, archive) as DSA-110 lays it out.",
    "tomograms": "Cryo-ET input tomograms.",
    "artifacts": "Segmentation artifacts, one folder per run.",
    "models": "Model registry and trained models.",
    "backups": "Backup host side: staging copy and borg repositories.",
    "scratch": "Scratch space for staging partial products before they are moved into place.",
}


class Layout(BaseModel):
    """Absolute roots of every kind of data labpipe reads or writes."""

    share: Path = Field(description=ROOT_DESCRIPTIONS["share"])
    staging: Path = Field(description=ROOT_DESCRIPTIONS["staging"])
    blobs: Path = Field(description=ROOT_DESCRIPTIONS["blobs"])
    dumps: Path = Field(description=ROOT_DESCRIPTIONS["dumps"])
    radio: Path = Field(description=ROOT_DESCRIPTIONS["radio"])
    tomograms: Path = Field(description=ROOT_DESCRIPTIONS["tomograms"])
    artifacts: Path = Field(description=ROOT_DESCRIPTIONS["artifacts"])
    models: Path = Field(description=ROOT_DESCRIPTIONS["models"])
    backups: Path = Field(description=ROOT_DESCRIPTIONS["backups"])
    scratch: Path = Field(description=ROOT_DESCRIPTIONS["scratch"])

    @classmethod
    def default(cls, home: Path) -> Layout:
        home = Path(home)
        return cls(**{name: home / "data" / name for name in ROOT_DESCRIPTIONS})

    def ensure(self) -> Layout:
        """Create every root that does not exist yet; returns self."""
        for name in ROOT_DESCRIPTIONS:
            getattr(self, name).mkdir(parents=True, exist_ok=True)
        return self
