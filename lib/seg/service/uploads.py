"""Resumable uploads: parts written in place, each checked; the whole file checked and validated before it exists.

An upload is a folder ``<data>/uploads/<id>/``: ``upload.json`` (who, what
file, part size), ``data.partial`` (the file being assembled, every part
written at its offset), ``parts/<index>`` (the part's checksum, CRC32C or
SHA-256 as the client sent it: labpipe.seg.checksums; written only once its
bytes are in place and matched it) and
``parts/<index>.partial`` (how many bytes of a part cut mid-transfer were
received and synced: the client sends only the rest, ``X-Part-Offset``). The
folder is the state: after a restart ``init`` with the same fingerprint (user,
size, SHA-256, part size) finds the parts held.

The whole file is checked as it arrives, not read again at the end: once a
part is held, the contiguous prefix of held parts is read back (from the page
cache) into a running SHA-256 and the MRC validator's streaming scan (header
from the first bytes, then every voxel). ``complete`` then normally only
compares the digest and renames ``data.partial`` to ``<data>/files/<id>.mrc``
with its record ``<id>.json``. After a restart (the running state is in
memory) or a part sent again, the prefix is read again from the start. A
refused file leaves nothing behind. The client's file name is kept for
display and never becomes a path.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labpipe.errors import LabpipeError
from labpipe.files import atomic_write_text
from labpipe.seg import checksums
from labpipe.seg.mrc import StreamValidator, validate_tomogram
from labpipe.seg.service.auth import Principal
from labpipe.seg.service.errors import ServiceError, from_labpipe, invalid, not_found
from labpipe.seg.service.settings import ServiceSettings

log = logging.getLogger("labpipe.seg.service")
ID = re.compile(r"[0-9a-f]{32}")
SHA256 = re.compile(r"[0-9a-f]{64}")
READ_BYTES = 8 << 20
SETTLE_S = 2.0  # how long a resuming init waits for the parts still being received (a cut is seen within ms)


def check_id(value: str, what: str) -> str:
    if not ID.fullmatch(value or ""):
        raise not_found(what)
    return value


def check_sha256(value: object, field: str) -> str:
    text = str(value or "").lower()
    if not SHA256.fullmatch(text):
        raise invalid(field, "expected the SHA-256 as 64 hex digits")
    return text


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def display_name(filename: object) -> str:
    """The client's file name reduced to something safe to show (never used as a path)."""
    text = re.sub(r"[\x00-\x1f\x7f]", "", os.path.basename(str(filename or "").replace("\\", "/"))).strip()
    if not text:
        raise invalid("filename", "is empty", "send the tomogram's file name, e.g. TS_01.mrc")
    return text[:200]


def declared_checksums(headers) -> dict[str, str]:
    """The part checksums a request declares (``{algorithm: hex}``): at least one, each well formed."""
    declared = {}
    for algorithm, header in checksums.HEADERS.items():
        value = headers.get(header.lower())
        if value is None:
            continue
        declared[algorithm] = checksums.well_formed(algorithm, value)
        if declared[algorithm] is None:
            digits = checksums.DIGITS[algorithm]
            raise invalid(header, f"expected the part's {algorithm.upper()} as {digits} hex digits")
    if not declared:
        raise invalid(
            " or ".join(checksums.HEADERS.values()),
            "missing: every part needs its checksum",
            " or ".join(f"{h} ({checksums.DIGITS[a]} hex digits)" for a, h in checksums.HEADERS.items())
            + " of the whole part (CRC32C big-endian)",
        )
    return declared


class PartWriter:
    """Receives one part's bytes into its slot of ``data.partial``; ``finish`` checks and records it.

    ``start`` > 0 resumes a part cut mid-transfer: its first ``start`` bytes are on disk already (read back
    into the part's checksums, which cover the whole part) and the body carries the rest.
    """

    def __init__(
        self,
        folder: Path,
        index: int,
        offset: int,
        expected: int,
        declared: dict[str, str],
        upload_id: str,
        start: int = 0,
    ) -> None:
        self.folder, self.index, self.offset, self.expected = folder, index, offset, expected
        self.declared, self.upload_id, self.start = declared, upload_id, start
        self._hashes = [checksums.PartHash(algorithm) for algorithm in declared]
        self._fd = os.open(folder / "data.partial", os.O_RDWR)
        done = 0
        while done < start:
            block = os.pread(self._fd, min(READ_BYTES, start - done), offset + done)
            if not block:
                break
            self._update(block)
            done += len(block)
        self.received = self.announced = done  # written / accepted from the body so far

    def _update(self, data) -> None:
        for running in self._hashes:
            running.update(data)

    @property
    def remaining(self) -> int:
        return self.expected - self.start

    def check_length(self, length: int) -> None:
        """413 when a part of ``length`` bytes (received so far, or announced) overflows its slot."""
        if length > self.expected:
            raise ServiceError(
                413,
                "part_too_large",
                f"part {self.index} is larger than its {self.expected} bytes",
                "cut the file in parts of part_size bytes (the last one the rest)",
            )

    def accept(self, length: int) -> None:
        """Count ``length`` more body bytes before they are written (413 at once when they overflow the slot)."""
        self.check_length(self.announced + length)
        self.announced += length

    def write(self, chunks) -> None:
        """Write body bytes (one chunk or a list, in order) at the part's current end, and hash them."""
        chunks = [chunks] if isinstance(chunks, bytes | bytearray | memoryview) else list(chunks)
        self.check_length(self.received + sum(len(c) for c in chunks))
        for chunk in chunks:  # hashed as received: a write that fails leaves the part to a new writer, which
            self._update(chunk)  # reads what reached the disk back into its own checksums
        views = [memoryview(c) for c in chunks if len(c)]
        while views:
            written = os.pwritev(self._fd, views, self.offset + self.received)
            self.received += written
            while written:
                used = min(written, len(views[0]))
                written -= used
                views[0] = views[0][used:]
                if not len(views[0]):
                    views.pop(0)

    def keep_partial(self) -> int:
        """After a cut: sync the bytes received and record how many, so the client sends only the rest."""
        if 0 < self.received < self.expected:
            os.fsync(self._fd)
            atomic_write_text(self.folder / "parts" / f"{self.index}.partial", str(self.received))
        return self.received

    def finish(self) -> dict:
        if self.received != self.expected:
            raise ServiceError(
                400,
                "part_size_mismatch",
                f"part {self.index} has {self.received} bytes, its slot {self.expected}",
                "every part is part_size bytes, the last one the rest of the file",
            )
        (self.folder / "parts" / f"{self.index}.partial").unlink(missing_ok=True)
        for running in self._hashes:
            if running.hexdigest() != self.declared[running.algorithm]:
                raise ServiceError(
                    400,
                    "part_checksum_mismatch",
                    f"part {self.index}: the bytes received do not match {checksums.HEADERS[running.algorithm]}",
                    "send the part again",
                    retryable=True,
                )
        algorithm, value = next(iter(self.declared.items()))
        atomic_write_text(self.folder / "parts" / str(self.index), checksums.record(algorithm, value))
        os.utime(self.folder / "upload.json")  # the upload is alive: the cleaner measures age from here
        return {"index": self.index, "bytes": self.received - self.start}

    def close(self) -> None:
        os.close(self._fd)
        self.on_close()

    def on_close(self) -> None:  # replaced by the store: the part may be written again
        pass


class Prefix:
    """The running check of an upload: SHA-256 and MRC scan of its first ``offset`` bytes (parts held in a row)."""

    def __init__(self, path: Path, streaming: bool) -> None:
        self.lock = threading.Lock()
        self.path, self.streaming = path, streaming
        self.reset()

    def reset(self) -> None:
        self.offset = 0
        self.hash = hashlib.sha256()
        self.scan = StreamValidator(self.path) if self.streaming else None


class UploadStore:
    """The uploads and the files they became, under ``settings.data``."""

    def __init__(self, settings: ServiceSettings, validate) -> None:
        self.settings, self.validate = settings, validate
        self.uploads, self.files = Path(settings.data) / "uploads", Path(settings.data) / "files"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.files.mkdir(parents=True, exist_ok=True)
        self._init_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        # the voxel scan runs as parts arrive only with the stock validator (a custom one reads the file at complete)
        self._streaming = validate is validate_tomogram
        self._prefixes: dict[str, Prefix] = {}
        self._prefixes_lock = threading.Lock()
        self._writing: dict[tuple[str, int], PartWriter | None] = {}  # parts being received now: one writer each
        self._checker = ThreadPoolExecutor(2, thread_name_prefix="upload-check")
        self._checks_queued: set[str] = set()  # uploads with a running check waiting to start: one is enough

    # -------------------------------------------------------------------------------- records

    def _meta(self, upload_id: str) -> dict | None:
        try:
            return json.loads((self.uploads / upload_id / "upload.json").read_text())
        except (OSError, ValueError):
            return None

    def file_record(self, principal: Principal, file_id: str) -> dict:
        check_id(file_id, f"file {file_id}")
        try:
            record = json.loads((self.files / f"{file_id}.json").read_text())
        except (OSError, ValueError):
            raise not_found(f"file {file_id}") from None
        if not principal.may_see(record["user"]):
            raise not_found(f"file {file_id}")
        return record

    def file_path(self, file_id: str) -> Path:
        return self.files / f"{check_id(file_id, 'file')}.mrc"

    def _held(self, upload_id: str) -> list[int]:
        parts = self.uploads / upload_id / "parts"
        return sorted(int(p.name) for p in parts.iterdir() if p.name.isdigit()) if parts.is_dir() else []

    def _partial(self, upload_id: str, held: list[int]) -> dict[int, int]:
        """Bytes received of parts cut mid-transfer (not held): ``{index: bytes}``."""
        parts, found = self.uploads / upload_id / "parts", {}
        for record in parts.glob("*.partial") if parts.is_dir() else ():
            index = record.name.split(".")[0]
            with contextlib.suppress(OSError, ValueError):
                if index.isdigit() and int(index) not in held:
                    found[int(index)] = int(record.read_text().strip())
        return dict(sorted(found.items()))

    def _view(self, meta: dict) -> dict:
        touched = (self.uploads / meta["upload_id"] / "upload.json").stat().st_mtime
        held = self._held(meta["upload_id"])
        return {
            **{k: meta[k] for k in ("upload_id", "filename", "size", "sha256", "part_size", "parts_total")},
            "parts_received": held,
            "partial": {str(i): n for i, n in self._partial(meta["upload_id"], held).items()},
            "state": "uploading",
            "file_id": None,
            "created_at": meta["created_at"],
            "expires_at": iso(touched + self.settings.upload_max_age_s),
        }

    @staticmethod
    def _complete_view(record: dict) -> dict:
        return {
            "upload_id": record["file_id"],
            **{k: record[k] for k in ("filename", "size", "sha256", "part_size", "parts_total", "created_at")},
            "parts_received": list(range(record["parts_total"])),
            "partial": {},
            "state": "complete",
            "file_id": record["file_id"],
            "expires_at": None,
            "metadata": record["metadata"],
        }

    def _owned_meta(self, principal: Principal, upload_id: str) -> dict:
        check_id(upload_id, f"upload {upload_id}")
        meta = self._meta(upload_id)
        if meta is None or not principal.may_see(meta["user"]):
            raise not_found(f"upload {upload_id}")
        return meta

    # -------------------------------------------------------------------------------- operations

    def init(self, principal: Principal, filename: object, size: object, sha256: object, part_size: object):
        """The upload of this fingerprint (resumed, or the file already made), else a new one; (view, created)."""
        name, digest = display_name(filename), check_sha256(sha256, "sha256")
        s = self.settings
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise invalid("size", "expected the file size in bytes (a positive integer)")
        if (
            not isinstance(part_size, int)
            or isinstance(part_size, bool)
            or not (s.part_size_min <= part_size <= s.part_size_max)
        ):
            raise invalid("part_size", f"expected an integer from {s.part_size_min} to {s.part_size_max} bytes")
        if size > s.max_upload_bytes:
            raise ServiceError(
                413,
                "upload_too_large",
                f"{name}: {size} bytes, more than {s.max_upload_bytes}",
                "segment it in place on the server (server_path) or ask the admins",
            )
        with self._init_lock:
            for record_file in self.files.glob("*.json"):
                record = json.loads(record_file.read_text())
                if (record["user"], record["sha256"], record["size"]) == (principal.user, digest, size):
                    return self._complete_view(record), False
            for meta_file in self.uploads.glob("*/upload.json"):
                meta = self._meta(meta_file.parent.name)
                fingerprint = (principal.user, digest, size, part_size)
                if meta and (meta["user"], meta["sha256"], meta["size"], meta["part_size"]) == fingerprint:
                    os.utime(meta_file)
                    self._settle(meta["upload_id"])
                    return self._view(meta), False
            free = shutil.disk_usage(self.uploads).free
            if free < size + s.free_disk_reserve_bytes:
                raise ServiceError(
                    503,
                    "insufficient_storage",
                    f"{name}: {size} bytes do not fit ({free} free)",
                    "try later or ask the admins to free space",
                    retryable=True,
                )
            upload_id = uuid.uuid4().hex
            folder = self.uploads / upload_id
            (folder / "parts").mkdir(parents=True)
            with open(folder / "data.partial", "wb") as f:
                f.truncate(size)  # sparse: the parts fill it in any order
            meta = {
                "upload_id": upload_id,
                "user": principal.user,
                "filename": name,
                "size": size,
                "sha256": digest,
                "part_size": part_size,
                "parts_total": -(-size // part_size),
                "created_at": iso(time.time()),
            }
            atomic_write_text(folder / "upload.json", json.dumps(meta))
            log.info(
                "upload %s started by %s: %d bytes in %d parts", upload_id, principal.user, size, meta["parts_total"]
            )
            return self._view(meta), True

    def _settle(self, upload_id: str, part: int | None = None, timeout: float = SETTLE_S) -> None:
        """Wait a little for parts (or one part) still being received: a client resuming after a cut learns what
        they kept (the server sees the cut within milliseconds, the client may ask sooner)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(u == upload_id and part in (None, i) for u, i in list(self._writing)):
            time.sleep(0.02)

    def status(self, principal: Principal, upload_id: str, part: int | None = None) -> dict:
        """The upload's view; with ``part``, once that part is no longer being received (at most ``SETTLE_S``)."""
        check_id(upload_id, f"upload {upload_id}")
        if (self.files / f"{upload_id}.json").exists():
            return self._complete_view(self.file_record(principal, upload_id))
        meta = self._owned_meta(principal, upload_id)
        if part is not None:
            self._settle(upload_id, part)
        return self._view(meta)

    def part_writer(
        self, principal: Principal, upload_id: str, index: int, declared: dict[str, str], start: object = None
    ) -> PartWriter:
        """A writer for part ``index`` from byte ``start`` (``X-Part-Offset``: at most the bytes received of it
        before a cut); its earlier copy, if any, no longer counts as held until this one is. ``close`` it."""
        check_id(upload_id, f"upload {upload_id}")
        if (self.files / f"{upload_id}.json").exists():
            self.file_record(principal, upload_id)  # 404 for another user's
            raise ServiceError(
                409,
                "upload_complete",
                f"upload {upload_id} is already complete",
                "nothing more to send: use its file_id",
            )
        meta = self._owned_meta(principal, upload_id)
        if not 0 <= index < meta["parts_total"]:
            raise ServiceError(
                400,
                "part_out_of_range",
                f"part {index}: this upload has parts 0 to {meta['parts_total'] - 1}",
                "index parts from 0 in steps of part_size",
            )
        text = str(start if start is not None else "0").strip()
        if not text.isdigit():
            raise invalid("X-Part-Offset", "expected the part's bytes already received (0 or more)")
        start = int(text)
        folder = self.uploads / upload_id
        with self._prefixes_lock:
            if (upload_id, index) in self._writing:
                raise ServiceError(
                    409,
                    "part_in_progress",
                    f"part {index} is being received on another connection",
                    "wait for it, or retry in a moment (a cut connection is noticed within seconds)",
                    retryable=True,
                )
            self._writing[(upload_id, index)] = None
        try:
            received = self._partial(upload_id, []).get(index, 0)
            if start > received:
                raise ServiceError(
                    409,
                    "part_offset_mismatch",
                    f"part {index}: X-Part-Offset {start}, but {received} bytes of it are held",
                    "resume from partial[index] of GET /v1/uploads/{id} (0: the whole part)",
                    retryable=True,
                    partial_bytes=received,
                )
            offset = index * meta["part_size"]
            prefix, held = self._prefix(upload_id), folder / "parts" / str(index)
            # The running check reads only parts held in a row, so while this part is not held (its first sending:
            # the usual case) it cannot pass this offset, and this writer, the part's only one, need not wait for
            # the check (which holds the lock while it reads a part). A part sent again, or a check that has read
            # past it (parts found damaged at complete), takes the lock: the check starts again from the start.
            if held.exists() or prefix.offset > offset:
                with prefix.lock:
                    if prefix.offset > offset:
                        prefix.reset()
                    held.unlink(missing_ok=True)
            length = min(meta["part_size"], meta["size"] - offset)
            writer = PartWriter(folder, index, offset, length, declared, upload_id, start)
        except BaseException:
            self._writing.pop((upload_id, index), None)
            raise
        self._writing[(upload_id, index)] = writer
        writer.on_close = lambda: self._writing.pop((upload_id, index), None)
        return writer

    def finish_part(self, writer: PartWriter) -> dict:
        """Check and record a received part, then advance the running check past it (in the background)."""
        done = writer.finish()
        with self._prefixes_lock:  # a check waiting to start reads this part too: parts arriving faster than the
            queued = writer.upload_id in self._checks_queued  # check queue one check, not one each
            self._checks_queued.add(writer.upload_id)
        if not queued:
            self._checker.submit(self._advance_quietly, writer.upload_id)
        return done

    def _prefix(self, upload_id: str) -> Prefix:
        with self._prefixes_lock:
            if upload_id not in self._prefixes:
                self._prefixes[upload_id] = Prefix(self.uploads / upload_id / "data.partial", self._streaming)
            return self._prefixes[upload_id]

    def _advance_quietly(self, upload_id: str) -> None:
        with self._prefixes_lock:
            self._checks_queued.discard(upload_id)
            prefix = self._prefixes.get(upload_id)
        if prefix is None:  # completed (complete read the rest itself) or discarded meanwhile
            return
        try:
            meta = self._meta(upload_id)
            if meta is not None:
                self._advance(meta, prefix)
        except Exception as exc:  # complete() reads again what this missed
            if not self._ended(upload_id):  # else completed or discarded under the check: nothing was missed
                log.warning("upload %s: running check stopped: %s: %s", upload_id, type(exc).__name__, exc)

    def _ended(self, upload_id: str) -> bool:
        """Whether the upload became a file (or is becoming one: renamed, record not written yet) or was discarded."""
        return (self.files / f"{upload_id}.mrc").exists() or not (self.uploads / upload_id / "upload.json").exists()

    def _advance(self, meta: dict, prefix: Prefix | None = None) -> Prefix:
        """Read the held parts that follow the running check's prefix into its SHA-256 and MRC scan."""
        upload_id, part_size, size = meta["upload_id"], meta["part_size"], meta["size"]
        folder = self.uploads / upload_id
        prefix = prefix or self._prefix(upload_id)
        with open(folder / "data.partial", "rb", buffering=0) as data:
            while True:
                with prefix.lock:  # a part at a time: a part sent again waits for one part's check, not all
                    if prefix.offset >= size or not (folder / "parts" / str(prefix.offset // part_size)).exists():
                        return prefix
                    end = min(size, (prefix.offset // part_size + 1) * part_size)
                    while prefix.offset < end:
                        block = os.pread(data.fileno(), min(READ_BYTES, end - prefix.offset), prefix.offset)
                        if not block:
                            raise OSError(f"data.partial ends at {prefix.offset} of {size} bytes")
                        prefix.hash.update(block)
                        if prefix.scan is not None:
                            prefix.scan.feed(prefix.offset, block)
                        prefix.offset += len(block)

    def complete(self, principal: Principal, upload_id: str) -> dict:
        """Check the whole SHA-256, validate the MRC, rename into place; refused files leave nothing behind."""
        check_id(upload_id, f"upload {upload_id}")
        with self._locks[upload_id]:
            if (self.files / f"{upload_id}.json").exists():
                return self._complete_view(self.file_record(principal, upload_id))
            meta = self._owned_meta(principal, upload_id)
            folder = self.uploads / upload_id
            held = set(self._held(upload_id))
            missing = [i for i in range(meta["parts_total"]) if i not in held]
            if missing:
                raise ServiceError(
                    409,
                    "upload_incomplete",
                    f"{len(missing)} of {meta['parts_total']} parts missing",
                    "send the missing parts, then complete again",
                    retryable=True,
                    missing=missing[:100],
                )
            final = self.files / f"{upload_id}.mrc"
            if not final.exists():  # else a crash came between the rename and the record: validate again
                prefix = self._advance(meta)  # normally done already, part by part; from 0 after a restart
                try:
                    if prefix.hash.hexdigest() == meta["sha256"] and prefix.scan is not None:
                        info = prefix.scan.finish()
                    else:  # a custom validator, or the running digest differs: read the file again to know why
                        self._check_whole(meta, folder)
                        info = self.validate(folder / "data.partial")
                except LabpipeError as exc:
                    self._discard(upload_id, f"refused by the MRC validator: {exc.problem}")
                    raise from_labpipe(exc, 422, "invalid_mrc", meta["filename"]) from None
                os.replace(folder / "data.partial", final)
            else:
                info = self.validate(final)
            metadata = {k: v for k, v in info.as_json().items() if k != "path"} | {"filename": meta["filename"]}
            record = {
                **{
                    k: meta[k] for k in ("user", "filename", "size", "sha256", "part_size", "parts_total", "created_at")
                },
                "file_id": upload_id,
                "metadata": metadata,
                "completed_at": iso(time.time()),
            }
            atomic_write_text(self.files / f"{upload_id}.json", json.dumps(record))
            shutil.rmtree(folder, ignore_errors=True)
            self._forget(upload_id)
            log.info("upload %s complete: %d bytes, valid MRC", upload_id, meta["size"])
            return self._complete_view(record)

    def _check_whole(self, meta: dict, folder: Path) -> None:
        digest = hashlib.sha256()
        with open(folder / "data.partial", "rb") as f:
            while chunk := f.read(READ_BYTES):
                digest.update(chunk)
        if digest.hexdigest() == meta["sha256"]:
            return
        # parts on disk that no longer match their recorded checksum (a crash under a write) are sent again
        bad = [i for i in self._held(meta["upload_id"]) if self._part_damaged(meta, folder, i)]
        if bad:
            for index in bad:
                (folder / "parts" / str(index)).unlink(missing_ok=True)
            raise ServiceError(
                409,
                "upload_incomplete",
                f"{len(bad)} parts were damaged on the server",
                "send the missing parts again, then complete",
                retryable=True,
                missing=bad[:100],
            )
        self._discard(meta["upload_id"], "SHA-256 of the assembled file differs from the one given at init")
        raise ServiceError(
            422,
            "checksum_mismatch",
            f"{meta['filename']}: the assembled file's SHA-256 differs from the one given at init",
            "check the file on your side (it may have changed while uploading) and upload it again",
        )

    @staticmethod
    def _part_damaged(meta: dict, folder: Path, index: int) -> bool:
        """Whether a held part's bytes on disk no longer match the checksum it was received with."""
        algorithm, value = checksums.parse_record((folder / "parts" / str(index)).read_text())
        offset = index * meta["part_size"]
        with open(folder / "data.partial", "rb") as f:
            f.seek(offset)
            return checksums.part_digest(algorithm, f.read(min(meta["part_size"], meta["size"] - offset))) != value

    def _forget(self, upload_id: str) -> None:
        with self._prefixes_lock:
            self._prefixes.pop(upload_id, None)

    def _discard(self, upload_id: str, why: str) -> None:
        shutil.rmtree(self.uploads / upload_id, ignore_errors=True)
        self._forget(upload_id)
        log.info("upload %s discarded: %s", upload_id, why)

    def abort(self, principal: Principal, upload_id: str) -> None:
        self._owned_meta(principal, upload_id)
        with self._locks[upload_id]:
            self._discard(upload_id, "abandoned by its user")

    def touch_file(self, file_id: str) -> None:
        """A job was given the file: its age (for ``file_max_age_s``) counts from now."""
        with contextlib.suppress(OSError):
            os.utime(self.files / f"{check_id(file_id, 'file')}.json")

    def clean_stale(self, now: float | None = None, in_use: set[str] | frozenset = frozenset()) -> list[str]:
        """Remove uploads untouched for ``upload_max_age_s`` (their parts with them) and files unused for
        ``file_max_age_s`` (since completed or last given a job) but those in ``in_use`` (a queued or running
        job's); returns the ids removed."""
        now = time.time() if now is None else now
        removed = self._clean_files(now, in_use)
        for folder in self.uploads.iterdir():
            meta_file = folder / "upload.json"
            try:
                age = now - (meta_file if meta_file.exists() else folder).stat().st_mtime
            except FileNotFoundError:
                continue
            if age > self.settings.upload_max_age_s and not self._locks[folder.name].locked():
                self._discard(folder.name, f"untouched for {age:.0f} s")
                removed.append(folder.name)
        return removed

    def _clean_files(self, now: float, in_use) -> list[str]:
        removed = []
        for path in sorted(self.files.iterdir()):
            file_id, suffix = path.stem, path.suffix
            if not ID.fullmatch(file_id) or file_id in in_use or suffix not in (".json", ".mrc"):
                continue
            record = self.files / f"{file_id}.json"
            if suffix == ".mrc" and (record.exists() or (self.uploads / file_id).exists()):
                continue  # judged by its record; or its upload is completing
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age <= self.settings.file_max_age_s:
                continue
            with self._locks[file_id]:
                record.unlink(missing_ok=True)  # first: the file is gone from the API before its bytes go
                (self.files / f"{file_id}.mrc").unlink(missing_ok=True)
            log.info("file %s removed: unused for %.0f s", file_id, age)
            removed.append(file_id)
        return removed
