"""A worker's local copy of models: downloaded once, verified by checksum on every use.

``<cache>/<room>/<model id>/`` holds the model's files exactly as published. A
folder is only ever complete: downloads go to a staging folder, every file is
checked against the manifest's SHA-256, and the folder is renamed into place.
A cached file that no longer matches (bit rot, a half-finished copy by hand, an
edit) is detected on the next use and the model is downloaded again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from labpipe.errors import InvalidInput
from labpipe.files import atomic_path, sha256_file
from labpipe.registry.backends import Backend
from labpipe.registry.manifest import ModelEntry

log = logging.getLogger("labpipe.registry")


class ModelCache:
    """Verified local copies of a room's models."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, room: str, model_id: str) -> Path:
        return self.root / room / model_id

    @contextlib.contextmanager
    def _locked(self, room: str, model_id: str) -> Iterator[None]:
        """One download of a model at a time on this host (several flow runs may ask at once)."""
        lock = self.root / room / f".{model_id}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def problems(self, room: str, entry: ModelEntry) -> list[str]:
        """What is wrong with the cached copy of ``entry`` (empty when it is complete and intact)."""
        folder = self.folder(room, entry.id)
        if not folder.is_dir():
            return ["not cached"]
        found = []
        for name, expected in entry.files.items():
            path = folder / name
            if not path.is_file():
                found.append(f"{name}: missing")
            elif path.stat().st_size != expected.size_bytes:
                found.append(f"{name}: {path.stat().st_size} bytes, expected {expected.size_bytes}")
            elif sha256_file(path) != expected.sha256:
                found.append(f"{name}: checksum differs from the manifest")
        return found

    def ensure(self, backend: Backend, room: str, entry: ModelEntry) -> tuple[Path, bool]:
        """The verified local folder of ``entry``, downloading it if absent or damaged; (folder, downloaded)."""
        with self._locked(room, entry.id):
            problems = self.problems(room, entry)
            if not problems:
                return self.folder(room, entry.id), False
            if problems != ["not cached"]:
                log.warning("cached model %s/%s is damaged (%s); downloading it again", room, entry.id, problems)
            self._download(backend, room, entry)
            return self.folder(room, entry.id), True

    def _download(self, backend: Backend, room: str, entry: ModelEntry) -> None:
        with atomic_path(self.folder(room, entry.id)) as staging:
            staging.mkdir()
            for name, expected in entry.files.items():
                dest = staging / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                backend.download(room, f"models/{entry.id}/{name}", dest)
                if sha256_file(dest) != expected.sha256:
                    raise InvalidInput(
                        backend.url(room, f"models/{entry.id}/{name}"),
                        "stored file does not match the manifest's checksum",
                        "the store copy is damaged: republish the model or restore it from a backup",
                    )
            # published files are read-only for users of the cache: a model is never edited in place
            for path in staging.rglob("*"):
                if path.is_file():
                    os.chmod(path, 0o444)

    def cached_ids(self, room: str) -> list[str]:
        top = self.root / room
        return (
            sorted(p.name for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")) if top.exists() else []
        )

    def prune(self, room: str, keep: set[str]) -> list[str]:
        """Remove cached models no longer in the manifest; returns their ids."""
        removed = []
        for model_id in self.cached_ids(room):
            if model_id not in keep:
                with self._locked(room, model_id):
                    shutil.rmtree(self.folder(room, model_id), ignore_errors=True)
                removed.append(model_id)
        return removed
