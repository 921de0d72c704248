"""The room manifest: every model of a room by id, and the aliases pointing at them.

The schema is the SLEAP-RTC room manifest (``version``, ``room_id``, ``updated_at``,
``models`` by id, ``aliases``), field for field; labpipe adds ``revision`` (a counter
bumped by every write, so a reader can tell a newer manifest from an older one), and
per model the ``files`` with their SHA-256 (what caches verify against), the training
``config`` the id is derived from, and evaluation ``metrics``. ``s3_path`` keeps the
seed's name but holds the storage URL of the model folder on either backend
(``s3://bucket/...`` or ``file:///...``). Unknown fields are kept, so a newer writer's
additions survive an older reader's update.

Two lease maps serialise publishing against deleting files through the manifest's
conditional write: ``publishing`` (model id -> lease of a publish whose files are being
uploaded or checked, before its entry is written) and ``collecting`` (model id -> lease of
a ``gc`` or ``delete`` removing that model's files). A publish waits while its id is being
collected; ``gc`` and ``delete`` leave alone an id being published. Leases carry the
writer's clock (``since``); they assume hosts' clocks agree to within minutes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any

from labpipe.errors import ConflictError, InvalidInput
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.0"
MODEL_ID_LENGTH = 8
ROOM = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MODEL_ID = re.compile(r"[0-9a-f]{8}")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class TrainingFacts(BaseModel):
    """How a model was trained (the seed's ``training`` block; more fields are kept)."""

    model_config = ConfigDict(extra="allow")

    dataset_hash: str = Field("", description="Hash of the exact training data.")
    epochs: int = Field(0, description="Epochs trained.")
    final_loss: float | None = Field(None, description="Training loss of the last epoch.")
    training_duration_sec: float = Field(0.0, description="Wall time of the training run.")


class ModelFile(BaseModel):
    """One file of a model folder, as the cache verifies it."""

    sha256: str
    size_bytes: int


class Lease(BaseModel):
    """Who holds a model id for publishing or collecting, since when (``token``: one attempt)."""

    token: str
    worker: str = ""
    since: dt.datetime = Field(default_factory=utc_now)

    def age_seconds(self, now: dt.datetime | None = None) -> float:
        return ((now or utc_now()) - self.since).total_seconds()


class ModelEntry(BaseModel):
    """One published model (the seed's model record plus ``files``, ``config``, ``metrics``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    alias: str | None = Field(None, description="The alias most recently pointed at this model, if it still does.")
    model_type: str
    trained_at: dt.datetime
    trained_by: str = ""
    trained_on_worker: str = ""
    s3_path: str = Field(description="Storage URL of the model folder (s3://... or file://...).")
    checkpoint_path: str = Field(description="Storage URL of the main checkpoint file.")
    size_bytes: int = 0
    available_on_workers: list[str] = Field(default_factory=list)
    notes: str = ""
    tags: list[str] = Field(default_factory=list)
    training: TrainingFacts = Field(default_factory=TrainingFacts)
    files: dict[str, ModelFile] = Field(default_factory=dict)
    checkpoint: str = Field("", description="Name of the main checkpoint file inside the folder.")
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    """A room's registry: models by id and an aliases map (``production-v2 -> a3f5e8c9``)."""

    model_config = ConfigDict(extra="allow")

    version: str = SCHEMA_VERSION
    room_id: str
    updated_at: dt.datetime = Field(default_factory=utc_now)
    revision: int = 0
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)
    publishing: dict[str, Lease] = Field(default_factory=dict, description="Model id -> publish in progress.")
    collecting: dict[str, Lease] = Field(default_factory=dict, description="Model id -> its files being deleted.")

    @classmethod
    def empty(cls, room: str) -> Manifest:
        return cls(room_id=room)

    @classmethod
    def parse(cls, data: bytes, source: str) -> Manifest:
        """Read a manifest; raises ``InvalidInput`` naming ``source`` if it is not one we can read."""
        try:
            manifest = cls.model_validate_json(data)
        except ValueError as exc:
            raise InvalidInput(source, f"not a readable room manifest: {exc}", "restore it from a backup") from exc
        if manifest.version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise InvalidInput(
                source, f"manifest schema version {manifest.version}, expected {SCHEMA_VERSION}", "upgrade labpipe"
            )
        return manifest

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=2, exclude_none=False).encode()

    def find(self, ref: str) -> ModelEntry | None:
        """The model an alias, an id or a unique id prefix (at least 4 characters) names."""
        if ref in self.aliases:
            return self.models.get(self.aliases[ref])
        if ref in self.models:
            return self.models[ref]
        if len(ref) >= 4:
            hits = [m for i, m in self.models.items() if i.startswith(ref)]
            if len(hits) == 1:
                return hits[0]
        return None

    def set_alias(self, alias: str, model_id: str) -> None:
        """Point ``alias`` at ``model_id`` (which must be in this manifest)."""
        check_alias(alias)
        if model_id not in self.models:
            raise InvalidInput(
                model_id, f"no such model in room {self.room_id}", "list models with `labpipe models list`"
            )
        previous = self.aliases.get(alias)
        if previous in self.models and self.models[previous].alias == alias:
            self.models[previous].alias = None
        self.aliases[alias] = model_id
        self.models[model_id].alias = alias

    def remove_alias(self, alias: str) -> str | None:
        model_id = self.aliases.pop(alias, None)
        if model_id in self.models and self.models[model_id].alias == alias:
            others = [a for a, i in self.aliases.items() if i == model_id]
            self.models[model_id].alias = others[-1] if others else None
        return model_id

    def aliases_of(self, model_id: str) -> list[str]:
        return sorted(a for a, i in self.aliases.items() if i == model_id)

    def dangling_aliases(self) -> dict[str, str]:
        """Aliases pointing at no model (never written by labpipe; checked by tests and ``models show``)."""
        return {a: i for a, i in self.aliases.items() if i not in self.models}


def check_room(room: str) -> str:
    if not ROOM.fullmatch(room):
        raise InvalidInput(room, "room name: expected 1-63 lowercase letters, digits, '.', '_' or '-'")
    return room


def check_alias(alias: str) -> str:
    if not ALIAS.fullmatch(alias):
        raise InvalidInput(alias, "alias: expected letters, digits, '.', '_' or '-' (at most 128)")
    if MODEL_ID.fullmatch(alias):
        raise InvalidInput(alias, "alias looks like a model id (8 hex digits)", "choose a name such as production-v2")
    return alias


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def derive_model_id(model_type: str, config: dict[str, Any], files: dict[str, ModelFile]) -> str:
    """The id of a model: a hash of its type, training config and file contents.

    Publishing the same files with the same config again gives the same id (an
    idempotent publish); any change of weights or config gives a new one.
    """
    content = {"model_type": model_type, "config": config, "files": {n: f.sha256 for n, f in sorted(files.items())}}
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()[:MODEL_ID_LENGTH]


def check_same_model(existing: ModelEntry, files: dict[str, ModelFile]) -> None:
    """Two different models with the same id (a hash collision) must never replace one another."""
    if {n: f.sha256 for n, f in existing.files.items()} != {n: f.sha256 for n, f in files.items()}:
        raise ConflictError(
            existing.id, "a different model already has this id", "add a distinguishing key to the training config"
        )
