"""Where a room's manifest and model files live: a file system, or an S3-compatible object store.

Both backends offer the same small interface on keys relative to a room
(``manifest.json``, ``models/<id>/<file>``, ``workers/<worker>.json``). The one
operation that needs care is ``write_if``: replace the manifest only if it is
still the version the writer read (its etag), so concurrent publishers never
lose each other's updates.

- ``FilesystemBackend``: ``<root>/<room>/...``; the etag is the SHA-256 of the
  manifest bytes; the compare-and-replace holds an ``flock`` on the room's lock
  file and replaces the manifest by an atomic rename. Correct for processes on
  one host and on a shared file system whose locks work (local disks, NFSv4).
- ``S3Backend``: ``s3://<bucket>/<prefix><room>/...``; the etag is the object's
  ETag and the write is a conditional ``PutObject`` (``If-Match: <etag>``, or
  ``If-None-Match: *`` for the first manifest); 412 Precondition Failed and 409
  ConditionalRequestConflict become ``ManifestConflict`` and the caller re-reads.

What a backend says is stored is what is stored: ``stored_sha256`` is the SHA-256 of
the bytes in the store (the file hashed, or the store's own SHA-256 checksum of the
object, or the object read back and hashed), never the uploader's metadata, and
``upload`` checks it after writing. ``check_conditional_writes`` probes, when a
registry opens the store, that a conditional write which must fail does fail: a store
that ignores ``If-Match`` would silently lose concurrent manifest updates.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from labpipe.errors import ConfigError, ConflictError, InvalidInput, ToolError
from labpipe.files import atomic_path, atomic_write_bytes, sha256_file
from labpipe.optional import require

log = logging.getLogger("labpipe.registry")
CHUNK = 4 << 20


class ManifestConflict(ConflictError):
    """The manifest changed since it was read; re-read, re-apply the change and try again."""


class StoreUnreachable(ToolError):
    """The model store does not answer (network, endpoint down); cached models may still be used."""


class Backend(Protocol):
    """Storage of rooms: manifests (conditional writes), model files and worker records."""

    def url(self, room: str, key: str) -> str: ...

    def read(self, room: str, key: str, *, if_none_match: str | None = None) -> tuple[bytes | None, str | None]:
        """(content, etag); (None, None) if absent; (None, etag) if it still has etag ``if_none_match``."""

    def write_if(self, room: str, key: str, data: bytes, etag: str | None) -> str:
        """Replace ``key`` only if its etag is ``etag`` (``None``: only if absent); returns the new etag."""

    def put_bytes(self, room: str, key: str, data: bytes) -> None: ...

    def check_conditional_writes(self, room: str) -> None:
        """Raise ``ConfigError`` if the store does not honour conditional writes (probed once)."""

    def upload(self, room: str, key: str, source: Path, sha256: str) -> None:
        """Store ``source`` (which must not change meanwhile) and check the stored bytes have ``sha256``."""

    def stored_sha256(self, room: str, key: str, *, expect: str | None = None) -> str | None:
        """SHA-256 of the bytes stored at ``key`` (None if absent); ``expect`` may let a store skip a read-back."""

    def download(self, room: str, key: str, dest: Path) -> None: ...

    def list(self, room: str, prefix: str) -> list[str]: ...

    def delete(self, room: str, key: str) -> None: ...

    def age_seconds(self, room: str, key: str) -> float | None: ...


def _clean_key(key: str) -> str:
    parts = key.removesuffix("/").split("/")  # a trailing slash names a folder (in URLs)
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(key, "storage key: expected a relative path without '.', '..' or empty parts")
    return key


class FilesystemBackend:
    """Rooms under a folder (``Layout.models`` by default, or a shared mount every worker sees)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FilesystemBackend({self.root})"

    def path(self, room: str, key: str) -> Path:
        return self.root / room / _clean_key(key)

    def url(self, room: str, key: str) -> str:
        uri = (self.root / room / _clean_key(key)).resolve().as_uri() if key else (self.root / room).resolve().as_uri()
        return uri + "/" if key.endswith("/") or not key else uri

    def read(self, room: str, key: str, *, if_none_match: str | None = None) -> tuple[bytes | None, str | None]:
        try:
            data = self.path(room, key).read_bytes()
        except FileNotFoundError:
            return None, None
        etag = hashlib.sha256(data).hexdigest()
        return (None, etag) if etag == if_none_match else (data, etag)

    @contextlib.contextmanager
    def _locked(self, room: str) -> Iterator[None]:
        lock_path = self.root / room / ".manifest.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write_if(self, room: str, key: str, data: bytes, etag: str | None) -> str:
        path = self.path(room, key)
        with self._locked(room):
            _, current = self.read(room, key)
            if current != etag:
                raise ManifestConflict(path, f"changed since read (etag {etag} is now {current})", "re-read and retry")
            atomic_write_bytes(path, data)
        return hashlib.sha256(data).hexdigest()

    def put_bytes(self, room: str, key: str, data: bytes) -> None:
        atomic_write_bytes(self.path(room, key), data)

    def check_conditional_writes(self, room: str) -> None:
        """Nothing to probe: ``write_if`` compares and renames under this process's own ``flock``."""

    def upload(self, room: str, key: str, source: Path, sha256: str) -> None:
        dest = self.path(room, key)
        with atomic_path(dest) as tmp:  # fsynced, then renamed: the key holds the old file or the whole new one
            shutil.copyfile(source, tmp)
            if sha256_file(tmp) != sha256:
                raise ConflictError(source, "changed while it was being published", "publish it again")

    def stored_sha256(self, room: str, key: str, *, expect: str | None = None) -> str | None:
        path = self.path(room, key)
        return sha256_file(path) if path.is_file() else None

    def download(self, room: str, key: str, dest: Path) -> None:
        try:
            shutil.copyfile(self.path(room, key), dest)
        except FileNotFoundError:
            raise InvalidInput(self.url(room, key), "model file is missing from the store") from None

    def list(self, room: str, prefix: str) -> list[str]:
        top = self.root / room
        base = top / prefix if prefix else top
        if not base.exists():
            return []
        return sorted(
            p.relative_to(top).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(top).parts)
        )

    def delete(self, room: str, key: str) -> None:
        path = self.path(room, key)
        path.unlink(missing_ok=True)
        # drop folders left empty (a removed model), never the room itself
        for parent in path.parents:
            if parent == self.root / room:
                break
            with contextlib.suppress(OSError):
                parent.rmdir()

    def age_seconds(self, room: str, key: str) -> float | None:
        import time

        try:
            return time.time() - self.path(room, key).stat().st_mtime
        except FileNotFoundError:
            return None


class S3Backend:
    """Rooms in an S3 bucket (AWS, MinIO, Ceph RGW, moto; anything with conditional PutObject)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        prefix: str = "",
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        create_bucket: bool = False,
    ) -> None:
        boto3 = require("boto3", "registry", "the S3 model store")
        Config = require("botocore.config", "registry", "the S3 model store").Config
        self.bucket, self.prefix, self.endpoint_url = (
            bucket,
            prefix.strip("/") + "/" if prefix.strip("/") else "",
            endpoint_url,
        )
        self._lock = threading.Lock()
        self._conditional_writes_checked = False
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
        )
        self.client = _Unreachable(
            session.client(
                "s3",
                endpoint_url=endpoint_url,
                config=Config(
                    s3={"addressing_style": "path"},
                    retries={"max_attempts": 4, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=60,
                ),
            ),
            f"s3://{bucket} at {endpoint_url or 'AWS'}",
        )
        if create_bucket:
            self.ensure_bucket()

    def __repr__(self) -> str:
        return f"S3Backend(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint_url})"

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
                self.client.create_bucket(Bucket=self.bucket)

    def _key(self, room: str, key: str) -> str:
        return f"{self.prefix}{room}/{_clean_key(key)}" if key else f"{self.prefix}{room}/"

    def url(self, room: str, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(room, key)}"

    def _fail(self, room: str, key: str, exc: Exception, action: str) -> ToolError:
        hint = "check the model store block (endpoint, bucket, credentials)"
        if "NoSuchBucket" in str(exc):
            return ConfigError(f"s3://{self.bucket}", "bucket does not exist", "create it or fix the model store block")
        return ToolError(self.url(room, key), f"{action} failed: {exc}", hint)

    @staticmethod
    def _status(exc) -> tuple[int, str]:
        response = getattr(exc, "response", {}) or {}
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status, response.get("Error", {}).get("Code", "")

    def read(self, room: str, key: str, *, if_none_match: str | None = None) -> tuple[bytes | None, str | None]:
        from botocore.exceptions import ClientError

        extra = {"IfNoneMatch": if_none_match} if if_none_match else {}
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(room, key), **extra)
        except ClientError as exc:
            status, code = self._status(exc)
            if status == 304 or code == "304":
                return None, if_none_match
            if status == 404 or code in ("NoSuchKey", "404"):
                return None, None
            raise self._fail(room, key, exc, "read") from exc
        return response["Body"].read(), response["ETag"]

    def write_if(self, room: str, key: str, data: bytes, etag: str | None) -> str:
        from botocore.exceptions import ClientError

        self.check_conditional_writes(room)  # once per backend; deferred here if the store was down at open
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=self._key(room, key), Body=data, ContentType="application/json", **condition
            )
        except ClientError as exc:
            status, code = self._status(exc)
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise ManifestConflict(
                    self.url(room, key), f"changed since read ({code or status})", "re-read"
                ) from exc
            if status == 404 or code == "NoSuchKey":  # If-Match on an object deleted meanwhile
                raise ManifestConflict(self.url(room, key), "deleted since read", "re-read") from exc
            raise self._fail(room, key, exc, "conditional write") from exc
        return response["ETag"]

    def put_bytes(self, room: str, key: str, data: bytes) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(room, key), Body=data)
        except ClientError as exc:
            raise self._fail(room, key, exc, "write") from exc

    def check_conditional_writes(self, room: str) -> None:
        """Probe that the store refuses a conditional write it must refuse (``If-None-Match: *``, ``If-Match``).

        Writes a probe object under the room, tries to create it again and to replace it with a wrong
        ETag; both must fail with 412/409. A store that accepts either (old MinIO, some gateways and
        proxies) raises ``ConfigError``: concurrent manifest updates there would silently lose one another.
        """
        from botocore.exceptions import ClientError

        if self._conditional_writes_checked:
            return
        key = f".labpipe-probe/{uuid.uuid4().hex}"
        where = f"{self.url(room, '')} at {self.endpoint_url or 'AWS'}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(room, key), Body=b"1", IfNoneMatch="*")
            for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"00000000000000000000000000000000"'}):
                try:
                    self.client.put_object(Bucket=self.bucket, Key=self._key(room, key), Body=b"2", **condition)
                except ClientError as exc:
                    status, code = self._status(exc)
                    if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                        continue
                    raise self._fail(room, key, exc, "conditional write probe") from exc
                header = "If-Match" if "IfMatch" in condition else "If-None-Match"
                raise ConfigError(
                    where,
                    f"the store ignores {header} on PutObject (If-Match/If-None-Match conditional writes): a write "
                    "that had to fail succeeded, so concurrent registry updates would silently overwrite each other",
                    "use a store with conditional writes (AWS S3, recent MinIO, Ceph RGW) or the filesystem backend",
                )
        except ClientError as exc:
            raise self._fail(room, key, exc, "conditional write probe") from exc
        finally:
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=self._key(room, key))
        self._conditional_writes_checked = True

    def upload(self, room: str, key: str, source: Path, sha256: str) -> None:
        """Upload with an S3 SHA-256 checksum (the store checks the bytes it receives), then verify the stored bytes.

        The metadata ``sha256`` is informative only; what counts is ``stored_sha256`` after the upload.
        """
        from botocore.exceptions import ClientError

        try:
            self.client.upload_file(
                str(source),
                self.bucket,
                self._key(room, key),
                ExtraArgs={"Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"},
            )
        except ClientError as exc:
            raise self._fail(room, key, exc, "upload") from exc
        stored = self.stored_sha256(room, key, expect=sha256)
        if stored != sha256:
            raise ConflictError(
                self.url(room, key),
                f"stored bytes have SHA-256 {stored}, expected {sha256} (the upload was altered or the file changed)",
                "publish again; if it persists, check the store",
            )

    def stored_sha256(self, room: str, key: str, *, expect: str | None = None) -> str | None:
        """SHA-256 of the stored bytes: the store's full-object SHA-256 checksum when it equals ``expect``,
        otherwise the object read back and hashed (constant memory). Never the uploader's metadata."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(room, key), ChecksumMode="ENABLED")
        except ClientError as exc:
            if self._status(exc)[0] == 404:
                return None
            raise self._fail(room, key, exc, "head") from exc
        checksum = head.get("ChecksumSHA256") or ""
        if expect and checksum and "-" not in checksum:  # "-N": a checksum of part checksums, not of the bytes
            with contextlib.suppress(ValueError):
                if base64.b64decode(checksum).hex() == expect:
                    return expect
        return self._read_back_sha256(room, key)

    def _read_back_sha256(self, room: str, key: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        digest = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(room, key))["Body"]
            for block in body.iter_chunks(CHUNK):
                digest.update(block)
        except BotoCoreError as exc:  # the body streams outside the client call
            raise StoreUnreachable(self.url(room, key), f"read back failed: {exc}", "check the endpoint") from exc
        except ClientError as exc:
            if self._status(exc)[0] == 404:
                return None
            raise self._fail(room, key, exc, "read back") from exc
        return digest.hexdigest()

    def download(self, room: str, key: str, dest: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(self.bucket, self._key(room, key), str(dest))
        except ClientError as exc:
            if self._status(exc)[0] == 404:
                raise InvalidInput(self.url(room, key), "model file is missing from the store") from exc
            raise self._fail(room, key, exc, "download") from exc

    def list(self, room: str, prefix: str) -> list[str]:
        base = self._key(room, "")
        keys, token = [], None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=base + prefix, **extra)
            keys += [item["Key"][len(base) :] for item in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return sorted(keys)

    def delete(self, room: str, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(room, key))

    def age_seconds(self, room: str, key: str) -> float | None:
        import datetime as dt

        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(room, key))
        except ClientError:
            return None
        return (dt.datetime.now(dt.UTC) - head["LastModified"]).total_seconds()


class _Unreachable:
    """A boto3 client whose connection failures become ``StoreUnreachable`` (ClientErrors pass through)."""

    def __init__(self, client, where: str) -> None:
        self._client, self._where = client, where

    @property
    def exceptions(self):
        return self._client.exceptions

    def __getattr__(self, name: str):
        from botocore.exceptions import BotoCoreError

        method = getattr(self._client, name)

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except BotoCoreError as exc:
                raise StoreUnreachable(self._where, f"{name} failed: {exc}", "check the endpoint and network") from exc

        return call
