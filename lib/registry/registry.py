"""The room registry: publish, alias, list, resolve and pull models; workers and discovery."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labpipe.errors import ConflictError, InvalidInput
from labpipe.files import atomic_write_bytes
from labpipe.registry.backends import Backend, ManifestConflict, StoreUnreachable
from labpipe.registry.cache import ModelCache
from labpipe.registry.discovery import WorkerRecord, check_filters, default_worker_id, matches
from labpipe.registry.manifest import (
    Lease,
    Manifest,
    ModelEntry,
    ModelFile,
    TrainingFacts,
    check_alias,
    check_room,
    check_same_model,
    derive_model_id,
    utc_now,
)

log = logging.getLogger("labpipe.registry")
MANIFEST = "manifest.json"
CHUNK = 4 << 20
PUBLISH_LEASE_S = 24 * 3600.0  # gc leaves a model id alone this long after a publish of it began
COLLECT_LEASE_S = 3600.0  # a publish waits this long for a gc/delete of its id, then takes the id over
STALE_STAGING_S = 24 * 3600.0


class _Busy(Exception):
    """The model id is being collected (its files deleted); wait and try again."""


class _Restart(Exception):
    """This publish's lease was lost (taken over or collected): check the files again."""


def _copy_hashing(source: Path, dest: Path) -> ModelFile:
    """Copy ``source`` to ``dest`` and hash the bytes copied (one read: the hash is of exactly this copy)."""
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as src, open(dest, "wb") as out:
        while block := src.read(CHUNK):
            digest.update(block)
            out.write(block)
            size += len(block)
    os.chmod(dest, 0o400)
    return ModelFile(sha256=digest.hexdigest(), size_bytes=size)


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load on this worker: its id, verified local folder and manifest entry."""

    id: str
    path: Path
    entry: ModelEntry
    downloaded: bool

    @property
    def checkpoint(self) -> Path:
        return self.path / self.entry.checkpoint


@dataclass
class UpdateStats:
    """How hard manifest writes had to try (the benchmark reports them)."""

    writes: int = 0
    conflicts: int = 0
    ambiguous: int = 0  # writes that timed out (outcome unknown) and were re-checked


def _files_of(source: Path) -> dict[str, Path]:
    source = Path(source)
    if source.is_file():
        return {source.name: source}
    if not source.is_dir():
        raise InvalidInput(source, "model to publish: expected a file or a folder of model files")
    files = {
        p.relative_to(source).as_posix(): p
        for p in sorted(source.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
    }
    if not files:
        raise InvalidInput(source, "model folder holds no files")
    return files


class Registry:
    """One room of the model registry, seen from one worker or client.

    ``backend`` holds the room (``FilesystemBackend`` or ``S3Backend``); ``cache``
    is this host's verified copy of the models it used. Manifest writes are
    optimistic: read with its etag, change, write only if unchanged, otherwise
    re-read and re-apply (up to ``max_attempts`` times, with jittered backoff).
    """

    def __init__(
        self,
        backend: Backend,
        room: str,
        cache_dir: Path,
        *,
        worker_id: str | None = None,
        user: str | None = None,
        max_attempts: int = 60,
        publish_lease_s: float = PUBLISH_LEASE_S,
        collect_lease_s: float = COLLECT_LEASE_S,
    ) -> None:
        self.backend, self.room = backend, check_room(room)
        self.publish_lease_s, self.collect_lease_s = publish_lease_s, collect_lease_s
        self.cache = ModelCache(cache_dir)
        self.worker_id = worker_id or default_worker_id()
        self.user = user or os.environ.get("USER", "unknown")
        self.max_attempts = max_attempts
        self.stats = UpdateStats()
        self._seen: tuple[Manifest, str] | None = None
        self._lock = threading.Lock()
        try:
            backend.check_conditional_writes(self.room)  # a store ignoring If-Match is refused here, at open
        except (OSError, StoreUnreachable) as exc:
            log.warning("model store unreachable (%s): conditional writes are probed before the first write", exc)

    def __repr__(self) -> str:
        return f"Registry(room={self.room!r}, {self.backend!r})"

    # --- manifest -------------------------------------------------------------------------------

    def _local_manifest(self) -> Path:
        return self.cache.root / self.room / MANIFEST

    def _read(self) -> tuple[Manifest, str | None]:
        """The current manifest and its etag; a conditional read when this worker already holds one."""
        seen = self._seen
        data, etag = self.backend.read(self.room, MANIFEST, if_none_match=seen[1] if seen else None)
        if data is None and etag is None:
            return Manifest.empty(self.room), None
        if data is None and seen is not None:
            return seen[0].model_copy(deep=True), etag
        manifest = Manifest.parse(data, self.backend.url(self.room, MANIFEST))
        self._remember(manifest, etag, data)
        return manifest.model_copy(deep=True), etag

    def _remember(self, manifest: Manifest, etag: str, data: bytes | None = None) -> None:
        with self._lock:
            changed = self._seen is None or self._seen[1] != etag
            self._seen = (manifest, etag)
        if changed:
            # a worker keeps the last manifest it saw, so it can still load cached models if the store is down
            atomic_write_bytes(self._local_manifest(), data if data is not None else manifest.to_bytes())

    def manifest(self) -> Manifest:
        """The room's manifest as it is now (re-read only if it changed since this worker last saw it)."""
        try:
            return self._read()[0]
        except (OSError, StoreUnreachable) as exc:
            local = self._local_manifest()
            if not local.exists():
                raise
            log.warning("model store unreachable (%s); using the manifest cached at %s", exc, local)
            return Manifest.parse(local.read_bytes(), str(local))

    def update(self, change: Callable[[Manifest], bool]) -> Manifest:
        """Apply ``change`` (which edits the manifest in place; False: nothing to write) until it sticks.

        ``change`` must be idempotent (return False when the manifest already holds its effect): after a
        conflict or a timed-out write it runs again on the re-read manifest.
        """
        for attempt in range(self.max_attempts):
            manifest, etag = self._read()
            if change(manifest) is False:
                return manifest
            manifest.revision += 1
            manifest.updated_at = utc_now()
            data = manifest.to_bytes()
            try:
                new_etag = self.backend.write_if(self.room, MANIFEST, data, etag)
            except ManifestConflict:
                self.stats.conflicts += 1
                time.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))
                continue
            except StoreUnreachable:
                # a timed-out write may or may not have landed: re-read and re-apply (changes are idempotent,
                # so one that landed is found applied and not written twice); give up after a few tries
                self.stats.ambiguous += 1
                if self.stats.ambiguous > 3:
                    raise
                time.sleep(random.uniform(0.5, 2.0))
                continue
            self.stats.writes += 1
            self._remember(manifest, new_etag, data)
            return manifest
        raise ConflictError(
            self.backend.url(self.room, MANIFEST),
            f"manifest kept changing under {self.max_attempts} attempts",
            "too many concurrent writers; retry later",
        )

    # --- publishing -----------------------------------------------------------------------------

    def publish(
        self,
        source: Path,
        *,
        model_type: str,
        config: dict[str, Any] | None = None,
        training: TrainingFacts | dict[str, Any] | None = None,
        checkpoint: str | None = None,
        alias: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        notes: str = "",
        metrics: dict[str, Any] | None = None,
        trained_by: str | None = None,
        trained_on_worker: str | None = None,
    ) -> ModelEntry:
        """Upload a model (a file or a folder) and add it to the manifest; returns its entry.

        The files are first copied to a private staging folder in this host's cache and
        hashed while copying, so the checksums, the id and the uploaded bytes are of the
        same snapshot even if the trainer keeps writing the source. Then, under a
        ``publishing`` lease in the manifest (``gc`` and ``delete`` leave the id alone),
        every file is uploaded unless the store already holds exactly these bytes, and
        the stored bytes are verified; then the manifest entry (with the alias, if given)
        in one conditional write. A crash in between leaves unreferenced files (removed
        by ``gc`` once the lease is stale), never an entry without its files.
        Publishing the same content again returns the existing entry, after repairing
        stored files that differ from it.
        """
        if alias:
            check_alias(alias)
        config = dict(config or {})
        paths = _files_of(source)
        checkpoint = checkpoint or next(iter(paths))
        if checkpoint not in paths:
            raise InvalidInput(checkpoint, f"checkpoint is not among the published files {sorted(paths)}")
        with self._staged(paths) as (staged, files):
            model_id = derive_model_id(model_type, config, files)
            existing = self.manifest().models.get(model_id)
            if existing is not None:
                check_same_model(existing, files)
            entry = ModelEntry(
                id=model_id,
                model_type=model_type,
                trained_at=utc_now(),
                trained_by=trained_by or self.user,
                trained_on_worker=trained_on_worker or self.worker_id,
                s3_path=self.backend.url(self.room, f"models/{model_id}/"),
                checkpoint_path=self.backend.url(self.room, f"models/{model_id}/{checkpoint}"),
                size_bytes=sum(f.size_bytes for f in files.values()),
                notes=notes,
                tags=list(tags),
                training=training if isinstance(training, TrainingFacts) else TrainingFacts(**(training or {})),
                files=files,
                checkpoint=checkpoint,
                config=config,
                metrics=dict(metrics or {}),
            )
            for attempt in range(3):
                # a model already in the manifest is safe from gc; a delete meanwhile makes ``add`` restart
                token = None if existing is not None and attempt == 0 else self._begin_publish(model_id)
                try:
                    self._store_files(model_id, staged, files)
                    return self.update(self._adder(entry, token, alias)).models[model_id]
                except _Restart:
                    log.warning("publish of %s lost its lease (taken over or collected); checking again", model_id)
                except BaseException:
                    if token is not None:
                        with contextlib.suppress(Exception):
                            self._end_publish(model_id, token)
                    raise
        raise ConflictError(
            self.backend.url(self.room, f"models/{model_id}/"),
            "publish kept losing its lease to gc or delete",
            "retry when no gc or delete of this model runs",
        )

    @contextlib.contextmanager
    def _staged(self, paths: dict[str, Path]) -> Iterator[tuple[dict[str, Path], dict[str, ModelFile]]]:
        """Private copies of ``paths`` and their checksums (hashed while copying), removed afterwards."""
        top = self.cache.root / self.room / ".publishing"
        top.mkdir(parents=True, exist_ok=True)
        for old in top.iterdir():  # left by a killed publish on this host
            with contextlib.suppress(OSError):
                if time.time() - old.stat().st_mtime > STALE_STAGING_S:
                    shutil.rmtree(old, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(prefix="publish-", dir=top))  # 0700: nobody else writes into it
        try:
            staged, files = {}, {}
            for name, path in paths.items():
                staged[name] = folder / name
                staged[name].parent.mkdir(parents=True, exist_ok=True)
                files[name] = _copy_hashing(path, staged[name])
            yield staged, files
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _lease(self, token: str) -> Lease:
        return Lease(token=token, worker=self.worker_id, since=utc_now())

    def _begin_publish(self, model_id: str) -> str:
        """Take the ``publishing`` lease of ``model_id`` (waiting while a gc/delete collects it); its token."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.collect_lease_s + 60

        def intent(manifest: Manifest) -> bool:
            held = manifest.publishing.get(model_id)
            if held is not None and held.token == token:
                return False  # our own earlier write whose answer was lost
            collecting = manifest.collecting.get(model_id)
            if collecting is not None and collecting.age_seconds() < self.collect_lease_s:
                raise _Busy(collecting)
            manifest.collecting.pop(model_id, None)  # a gc/delete that died: its lease has expired
            manifest.publishing[model_id] = self._lease(token)
            return True

        while True:
            try:
                self.update(intent)
                return token
            except _Busy as busy:
                if time.monotonic() > deadline:
                    held = busy.args[0]
                    raise ConflictError(
                        model_id, f"its files are being deleted by {held.worker} since {held.since}", "retry later"
                    ) from None
                time.sleep(random.uniform(0.5, 2.0))

    def _end_publish(self, model_id: str, token: str) -> None:
        def release(manifest: Manifest) -> bool:
            held = manifest.publishing.get(model_id)
            if held is None or held.token != token:
                return False
            del manifest.publishing[model_id]
            return True

        self.update(release)

    def _store_files(self, model_id: str, staged: dict[str, Path], files: dict[str, ModelFile]) -> None:
        """Upload each staged file unless the store holds exactly its bytes; uploads verify the stored bytes."""
        for name, path in staged.items():
            key = f"models/{model_id}/{name}"
            expected = files[name].sha256
            if self.backend.stored_sha256(self.room, key, expect=expected) != expected:
                self.backend.upload(self.room, key, path, expected)

    def _adder(self, entry: ModelEntry, token: str | None, alias: str | None) -> Callable[[Manifest], bool]:
        model_id = entry.id

        def add(manifest: Manifest) -> bool:
            held = manifest.publishing.get(model_id)
            ours = held is not None and token is not None and held.token == token
            changed = False
            if ours:
                del manifest.publishing[model_id]
                changed = True
            current = manifest.models.get(model_id)
            if current is not None:
                check_same_model(current, entry.files)
            elif not ours or model_id in manifest.collecting:
                raise _Restart(model_id)  # the files we checked may be gone
            else:
                manifest.models[model_id] = entry.model_copy(deep=True)
                changed = True
            if alias and manifest.aliases.get(alias) != model_id:
                manifest.set_alias(alias, model_id)
                changed = True
            return changed

        return add

    def set_alias(self, alias: str, ref: str) -> ModelEntry:
        """Point ``alias`` at the model ``ref`` names (an id, id prefix or another alias), atomically."""
        check_alias(alias)
        target: dict[str, str] = {}

        def move(manifest: Manifest) -> bool:
            entry = manifest.find(ref)
            if entry is None:
                raise InvalidInput(ref, f"no model or alias of that name in room {self.room}")
            target["id"] = entry.id
            if manifest.aliases.get(alias) == entry.id:
                return False
            manifest.set_alias(alias, entry.id)
            return True

        return self.update(move).models[target["id"]]

    def remove_alias(self, alias: str) -> None:
        tried: list[bool] = []

        def drop(manifest: Manifest) -> bool:
            if alias not in manifest.aliases:
                if tried:  # removed by our own earlier attempt whose answer was lost
                    return False
                raise InvalidInput(alias, f"no such alias in room {self.room}")
            tried.append(True)
            manifest.remove_alias(alias)
            return True

        self.update(drop)

    def delete(self, ref: str, *, force: bool = False) -> str:
        """Remove a model: first from the manifest (so nothing points at it), then its files.

        The entry goes in the same conditional write that takes the id's ``collecting``
        lease, so a concurrent republish of the same id waits until the files are gone
        (and then uploads them again); a delete refuses while the id is being published.
        """
        removed: dict[str, str] = {}
        token = uuid.uuid4().hex

        def drop(manifest: Manifest) -> bool:
            entry = manifest.find(ref)
            if entry is None and "id" in removed and removed["id"] not in manifest.models:
                return False  # removed by our own earlier attempt whose answer was lost
            if entry is None:
                raise InvalidInput(ref, f"no model or alias of that name in room {self.room}")
            publishing = manifest.publishing.get(entry.id)
            if publishing is not None and publishing.age_seconds() < self.publish_lease_s:
                raise ConflictError(
                    entry.id, f"being published by {publishing.worker} since {publishing.since}", "retry later"
                )
            aliases = manifest.aliases_of(entry.id)
            if aliases and not force:
                raise ConflictError(entry.id, f"still named by aliases {aliases}", "move them, or delete with force")
            for alias in aliases:
                manifest.remove_alias(alias)
            del manifest.models[entry.id]
            manifest.collecting[entry.id] = self._lease(token)
            removed["id"] = entry.id
            return True

        self.update(drop)
        self._collect([removed["id"]], token)
        return removed["id"]

    def gc(self, *, min_age_seconds: float = 3600.0, publish_lease_seconds: float | None = None) -> list[str]:
        """Delete model files no manifest entry names (left by a publish that crashed, or a delete), if old enough.

        A model id is collected only if none of its files is younger than ``min_age_seconds``
        and no publish of it holds a lease younger than ``publish_lease_seconds`` (default:
        the registry's ``publish_lease_s``, a day). It is claimed (a ``collecting`` lease) in
        a conditional manifest write that re-reads the manifest, so a model published
        meanwhile is seen and kept, and a publish that starts afterwards waits until the
        files are gone and uploads them again. Returns the deleted keys.
        """
        lease_s = self.publish_lease_s if publish_lease_seconds is None else publish_lease_seconds
        keys: dict[str, list[str]] = {}
        for key in self.backend.list(self.room, "models/"):
            keys.setdefault(key.split("/")[1], []).append(key)
        old_enough = []
        for model_id, its_keys in keys.items():
            ages = [self.backend.age_seconds(self.room, k) for k in its_keys]
            if all(age is not None and age >= min_age_seconds for age in ages):
                old_enough.append(model_id)
        if not old_enough:
            return []
        token = uuid.uuid4().hex
        claimed: list[str] = []

        def claim(manifest: Manifest) -> bool:
            claimed.clear()
            changed = False
            for model_id in old_enough:
                publishing = manifest.publishing.get(model_id)
                collecting = manifest.collecting.get(model_id)
                if model_id in manifest.models or (publishing is not None and publishing.age_seconds() < lease_s):
                    continue
                if collecting is not None and collecting.token == token:
                    claimed.append(model_id)  # our own earlier write whose answer was lost
                    continue
                if collecting is not None and collecting.age_seconds() < self.collect_lease_s:
                    continue  # another gc or a delete is at it
                manifest.publishing.pop(model_id, None)  # a publish that died long ago
                manifest.collecting[model_id] = self._lease(token)
                claimed.append(model_id)
                changed = True
            return changed

        self.update(claim)
        return self._collect(list(claimed), token)

    def _collect(self, model_ids: list[str], token: str) -> list[str]:
        """Delete the files of ``model_ids`` under our ``collecting`` lease, then release the lease."""
        started, removed = time.monotonic(), []
        try:
            for model_id in model_ids:
                for key in self.backend.list(self.room, f"models/{model_id}/"):
                    if time.monotonic() - started > self.collect_lease_s / 2:
                        raise ConflictError(
                            self.backend.url(self.room, "models/"),
                            "deleting took longer than half the collecting lease; stopped",
                            "run gc again",
                        )
                    self.backend.delete(self.room, key)
                    removed.append(key)
        finally:

            def release(manifest: Manifest) -> bool:
                mine = [i for i in model_ids if i in manifest.collecting and manifest.collecting[i].token == token]
                for model_id in mine:
                    del manifest.collecting[model_id]
                return bool(mine)

            self.update(release)
        return removed

    # --- reading --------------------------------------------------------------------------------

    def list(
        self, *, model_type: str | None = None, tags: list[str] | tuple[str, ...] = (), **config_filters: Any
    ) -> list[ModelEntry]:
        """Models of the room, newest first, optionally of one type, with all ``tags``, matching config values."""
        models = [
            m
            for m in self.manifest().models.values()
            if (model_type is None or m.model_type == model_type)
            and set(tags) <= set(m.tags)
            and matches(m.config, config_filters)
        ]
        return sorted(models, key=lambda m: (m.trained_at, m.id), reverse=True)

    def show(self, ref: str) -> ModelEntry:
        entry = self.manifest().find(ref)
        if entry is None:
            raise InvalidInput(ref, f"no model or alias of that name in room {self.room}", "see `labpipe models list`")
        return entry

    def resolve(self, ref: str, *, record_holder: bool = False) -> ResolvedModel:
        """The model ``ref`` names, verified in this worker's cache (downloaded on first use or if damaged).

        Follows the manifest as it is now: after an alias moves, the next resolve
        gives the new model. ``record_holder`` adds this worker to the entry's
        ``available_on_workers``.
        """
        entry = self.show(ref)
        folder, downloaded = self.cache.ensure(self.backend, self.room, entry)
        if record_holder and self.worker_id not in entry.available_on_workers:
            self._record_holder(entry.id)
        return ResolvedModel(entry.id, folder, entry, downloaded)

    def pull(self, ref: str) -> ResolvedModel:
        """``resolve`` and record this worker as a holder of the model (``labpipe models pull``)."""
        return self.resolve(ref, record_holder=True)

    def _record_holder(self, model_id: str) -> None:
        def add(manifest: Manifest) -> bool:
            entry = manifest.models.get(model_id)
            if entry is None or self.worker_id in entry.available_on_workers:
                return False
            entry.available_on_workers.append(self.worker_id)
            return True

        self.update(add)

    def refresh_cache(self) -> list[str]:
        """Drop cached models that left the manifest; returns their ids."""
        return self.cache.prune(self.room, set(self.manifest().models))

    # --- workers --------------------------------------------------------------------------------

    def register_worker(
        self,
        metadata: dict[str, Any],
        *,
        worker_id: str | None = None,
        pool: str = "gpu",
        role: str = "worker",
        tags: list[str] | tuple[str, ...] = (),
    ) -> WorkerRecord:
        """Publish (or refresh: a heartbeat) this worker's record in the room."""
        record = WorkerRecord(
            worker_id=worker_id or self.worker_id, pool=pool, role=role, tags=list(tags), metadata=dict(metadata)
        )
        self.backend.put_bytes(self.room, f"workers/{record.worker_id}.json", record.model_dump_json().encode())
        return record

    def workers(self) -> list[WorkerRecord]:
        records = []
        for key in self.backend.list(self.room, "workers/"):
            data, _ = self.backend.read(self.room, key)
            if data is None:
                continue
            try:
                records.append(WorkerRecord.model_validate_json(data))
            except ValueError:
                log.warning("unreadable worker record %s ignored", self.backend.url(self.room, key))
        return sorted(records, key=lambda r: r.worker_id)

    def discover(
        self,
        properties: dict[str, Any] | None = None,
        *,
        pool: str | None = "gpu",
        role: str | None = "worker",
        tags: list[str] | tuple[str, ...] = (),
        max_age_seconds: float | None = 600.0,
        only: set[str] | None = None,
    ) -> list[WorkerRecord]:
        """Workers whose metadata matches ``properties`` (seed syntax), fresh heartbeats, in ``pool``.

        ``only`` restricts to worker ids known to be online elsewhere (e.g. Prefect's workers of the pool).
        """
        filters = check_filters(properties or {})
        now = utc_now()
        return [
            r
            for r in self.workers()
            if (pool is None or r.pool == pool)
            and (role is None or r.role == role)
            and set(tags) <= set(r.tags)
            and (max_age_seconds is None or r.age_seconds(now) <= max_age_seconds)
            and (only is None or r.worker_id in only)
            and matches(r.metadata, filters)
        ]
