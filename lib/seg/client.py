"""The segmentation service's client: resumable uploads, jobs, live previews and signed downloads.

One client for every desktop front end (the napari widget, ``labpipe seg submit``, notebooks): pure Python
(httpx, and websockets for previews), no Qt and no Prefect, so the same code is tested once and every
front end behaves alike.

- **Uploads resume by fingerprint.** The file's SHA-256 is sent to ``init`` (read once, with every part's
  CRC32C in the same read: the parts are not read for a checksum again when sent); the server answers with the
  parts it already holds and how much it kept of parts cut mid-transfer, and only the rest is sent
  (``X-Part-Offset``), each part with the CRC32C of the whole part (``X-Part-CRC32C``; labpipe.seg.checksums
  says why not SHA-256). A dropped connection retries that part with backoff from the byte the
  server kept; when retries run out the error says to run the upload again, which then sends only what is
  still missing.
- **Errors** come from the server's one envelope ``{code, message, hint, retryable}`` and become a
  ``ServiceError`` (a ``LabpipeError``) carrying the server's hint; retryable ones (and 429/502/503/504,
  honouring ``Retry-After``) are retried with backoff first.
- **Previews** arrive over a WebSocket: integer-downsampled labels (element ``[i, j, k]`` is voxel
  ``[f*i, f*j, f*k]``), decoded to a numpy array with its scale. The stream reconnects with backoff and only
  the latest preview matters (a front end that lags drops older ones).
- **Artifacts** are downloaded through their signed URLs into ``atomic_path``: a cut download never leaves a
  half file at the destination.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
import numpy as np
from labpipe import optional
from labpipe.errors import LabpipeError
from labpipe.files import atomic_path
from labpipe.seg.checksums import DEFAULT as PART_CHECKSUM
from labpipe.seg.checksums import HEADERS as PART_HEADERS
from labpipe.seg.checksums import part_digest

MB = 1 << 20
DEFAULT_PART_BYTES = 16 * MB  # the server accepts 8-32 MB parts
RETRY_STATUS = {429, 502, 503, 504}
TERMINAL_STATES = {"completed", "failed", "canceled"}
Progress = Callable[[int, int], None]


class ServiceError(LabpipeError):
    """An error answered by the segmentation service (its envelope), or the service could not be reached."""

    def __init__(
        self,
        subject: object,
        problem: str,
        hint: str = "",
        *,
        code: str = "",
        retryable: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(subject, problem, hint)
        self.code = code
        self.retryable = retryable
        self.status = status

    def __reduce__(self):
        return (_rebuild_service_error, (self.subject, self.problem, self.hint, self.code, self.retryable, self.status))


def _rebuild_service_error(subject, problem, hint, code, retryable, status) -> ServiceError:
    return ServiceError(subject, problem, hint, code=code, retryable=retryable, status=status)


def error_from_response(subject: str, response: httpx.Response) -> ServiceError:
    """The ``ServiceError`` of an error answer: the envelope's fields, or the status and body when it has none."""
    try:
        body = response.json()
    except ValueError:
        body = None
    envelope = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(envelope, dict) and "message" in envelope:
        return ServiceError(
            subject,
            str(envelope["message"]),
            str(envelope.get("hint") or ""),
            code=str(envelope.get("code") or ""),
            retryable=bool(envelope.get("retryable")) or response.status_code in RETRY_STATUS,
            status=response.status_code,
        )
    detail = body.get("detail") if isinstance(body, dict) else response.text[:200]
    return ServiceError(
        subject,
        f"HTTP {response.status_code}: {detail or response.reason_phrase}",
        "",
        code=f"http_{response.status_code}",
        retryable=response.status_code in RETRY_STATUS,
        status=response.status_code,
    )


def untrusted(subject: str, exc: Exception) -> ServiceError | None:
    """The error for a server whose TLS certificate does not verify (not retried: it will not change), else None."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" not in text and "certificate verify failed" not in text:
        return None
    reason = text.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip(" :") or text
    return ServiceError(
        subject,
        f"the server's TLS certificate is not trusted ({reason})",
        "give the lab's CA certificate (labpipe seg submit --cacert FILE; in Python verify='FILE'), "
        "or check that the address is the segmentation server's",
        code="tls_untrusted",
    )


@dataclass
class Backoff:
    """Exponential backoff with jitter: ``base`` s doubling up to ``cap`` s, ``attempts`` tries in all."""

    attempts: int = 6
    base: float = 0.25
    cap: float = 8.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), 60.0)
        return min(self.cap, self.base * 2**attempt) * (0.5 + random.random() / 2)


def _retry_after(response: httpx.Response | None) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass
class JobOptions:
    """What a job runs: the model and nnU-Net's inference options (None: the server's default)."""

    model: str | None = None
    step_size: float | None = None
    mirroring: bool | None = None
    fp16: bool | None = None
    preview_factor: int | None = None
    preview_every: float | None = None  # seconds between previews (0: none)

    def as_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "model"}


@dataclass
class Job:
    """A job as the service reports it (``raw`` keeps every field the server sent)."""

    id: str
    state: str
    done: int = 0
    total: int = 0
    error: dict | None = None
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> signed URL (relative to the server)
    raw: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, data: dict) -> Job:
        progress = data.get("progress") or {}
        return cls(
            id=str(data["job_id"]),
            state=str(data.get("state", "")).lower(),
            done=int(progress.get("done") or 0),
            total=int(progress.get("total") or 0),
            error=data.get("error"),
            artifacts=artifact_urls(data.get("artifacts")),
            raw=data,
        )


def artifact_urls(artifacts: dict | None) -> dict[str, str]:
    """``{name: url}`` of a job's or a ``completed`` message's ``artifacts`` (``{name: {url, expires_at, bytes}}``)."""
    return {name: item["url"] for name, item in (artifacts or {}).items()}


@dataclass
class Upload:
    """An upload's outcome: ``sent_bytes`` counts the part bytes this call sent (retries included)."""

    id: str
    sha256: str
    size: int
    part_bytes: int
    parts: int
    held_at_start: int
    sent_bytes: int
    sent_parts: int
    file_id: str
    metadata: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)  # fingerprint, parts, complete (the server's check)


@dataclass
class PreviewFrame:
    """One preview: labels every ``factor``-th voxel (ZYX), with what it covers."""

    labels: np.ndarray
    scale: tuple[int, int, int]
    sequence: int | None = None
    published_at: float | None = None  # the server's wall-clock time of publication, when it sends one
    received_at: float = 0.0
    raw: dict = field(default_factory=dict)


def decode_preview(message: dict) -> PreviewFrame:
    """A ``preview`` message's labels (``zlib+base64`` of the C-order array) as a numpy array with its scale."""
    shape = tuple(int(s) for s in message["shape"])
    dtype = np.dtype(message.get("dtype", "uint8"))
    try:
        payload = base64.b64decode(message["payload"])
        if message.get("encoding", "zlib+base64") == "zlib+base64":
            payload = zlib.decompress(payload)
    except (ValueError, zlib.error) as exc:
        raise ServiceError("preview", f"payload does not decode ({exc})", "the next preview replaces it") from None
    if len(payload) != math.prod(shape) * dtype.itemsize:
        raise ServiceError(
            "preview",
            f"payload of {len(payload)} bytes does not fill shape {shape} of {dtype}",
            "the server sent a damaged preview; the next one replaces it",
        )
    scale = message.get("scale", 1)
    scale = tuple(int(s) for s in scale) if isinstance(scale, list | tuple) else (int(scale),) * 3
    raw = {k: v for k, v in message.items() if k != "payload"}
    return PreviewFrame(
        labels=np.frombuffer(payload, dtype).reshape(shape),
        scale=scale,
        sequence=message.get("seq"),
        published_at=message.get("published_at"),
        received_at=time.time(),
        raw=raw,
    )


_DIGESTS: dict[tuple, tuple[str, list[str]]] = {}  # (file key, part size) -> (SHA-256, part CRC32Cs)
_DIGESTING: dict[tuple, threading.Event] = {}  # files being read for their digests now: one reader each
_DIGESTS_LOCK = threading.Lock()


def _file_key(path: Path) -> tuple:
    stat = Path(path).stat()
    return (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def forget_fingerprints() -> None:
    """Forget the fingerprints remembered by this process: the next upload of any file reads it again."""
    with _DIGESTS_LOCK:
        _DIGESTS.clear()


def file_digests(path: Path, part_bytes: int, progress: Progress | None = None) -> tuple[str, list[str]]:
    """The file's SHA-256 (its fingerprint) and each ``part_bytes`` part's CRC32C, in one read of the file (the
    next part read and the part checksums on other threads: file reads and both hashes release the GIL),
    remembered for this process while the file's size and mtime stay: a resume of a 10 GB upload does not read
    the whole file again, and the parts are sent without being read for a checksum again. A file being read for
    them already (the widget starts when a file is opened) is waited for, not read twice."""
    key = (_file_key(path), part_bytes)
    while True:
        with _DIGESTS_LOCK:
            known = _DIGESTS.get(key)
            reading = None if known else _DIGESTING.get(key)
            if not known and reading is None:
                _DIGESTING[key] = threading.Event()  # this thread reads it
        if known:
            if progress:
                progress(key[0][1], key[0][1])
            return known
        if reading is None:
            break
        reading.wait()  # then its digests, or this thread's turn if that reading failed
    try:
        known = _read_digests(path, part_bytes, key[0][1], progress)
        with _DIGESTS_LOCK:
            _DIGESTS[key] = known
        return known
    finally:
        with _DIGESTS_LOCK:
            _DIGESTING.pop(key).set()


def _read_digests(path: Path, part_bytes: int, size: int, progress: Progress | None) -> tuple[str, list[str]]:
    digest, futures, done = hashlib.sha256(), [], 0
    with open(path, "rb") as handle, ThreadPoolExecutor(2, thread_name_prefix="seg-digest") as pool:
        reading = pool.submit(handle.read, part_bytes)
        while block := reading.result():
            reading = pool.submit(handle.read, part_bytes)  # the next part is read while this one is hashed
            futures.append(pool.submit(part_digest, PART_CHECKSUM, block))
            digest.update(block)
            if len(futures) > 1:
                futures[-2].result()  # at most three parts in memory
            done += len(block)
            if progress:
                progress(done, size)
        parts = [f.result() for f in futures]
    return digest.hexdigest(), parts


def read_token(token_file: Path | None) -> str | None:
    """The bearer token from ``token_file`` (first line), or ``$LABPIPE_SEG_TOKEN``; None when neither is set."""
    if token_file is None:
        return os.environ.get("LABPIPE_SEG_TOKEN") or None
    try:
        token = Path(token_file).read_text().strip().splitlines()
    except OSError as exc:
        raise ServiceError(token_file, f"cannot read the token file ({exc.strerror})", "give a readable file") from None
    if not token or not token[0].strip():
        raise ServiceError(token_file, "the token file is empty", "put the token the lab gave you in it")
    return token[0].strip()


class SegmentationClient:
    """A session with one segmentation server (``base_url`` like ``https://seg.lab:8443``)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        backoff: Backoff | None = None,
        timeout: float = 60.0,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.backoff = backoff or Backoff()
        self.verify = verify
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, verify=verify, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, retry: bool = True, **kwargs) -> httpx.Response:
        """One API call; transport errors and retryable answers are retried with backoff, others raise."""
        subject = f"{method} {self.base_url}{path}"
        attempts = self.backoff.attempts if retry else 1
        for attempt in range(attempts):
            response = None
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                error = untrusted(subject, exc) or ServiceError(
                    subject,
                    f"no answer ({type(exc).__name__}: {exc})",
                    "check the server address and that the server runs; a transfer resumes where it stopped",
                    code="unreachable",
                    retryable=True,
                )
            else:
                if response.is_success:
                    return response
                error = error_from_response(subject, response)
            if not error.retryable or attempt == attempts - 1:
                raise error
            time.sleep(self.backoff.delay(attempt, _retry_after(response)))
        raise AssertionError("unreachable")  # pragma: no cover

    def get_json(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs).json()

    # -- server ---------------------------------------------------------------------------------------------

    def healthy(self) -> bool:
        try:
            return self.http.get("/v1/healthz", timeout=5).is_success
        except httpx.TransportError:
            return False

    def server_info(self) -> dict:
        return self.get_json("/v1/server/info")

    # -- uploads --------------------------------------------------------------------------------------------

    def upload(
        self,
        path: Path,
        *,
        part_bytes: int = DEFAULT_PART_BYTES,
        progress: Progress | None = None,
        hash_progress: Progress | None = None,
        concurrency: int = 2,
        cancel: threading.Event | None = None,
    ) -> Upload:
        """Upload ``path`` resumably and complete it; the server validates the MRC at completion.

        ``progress(done, total)`` counts bytes the server holds (parts held before this call included);
        ``hash_progress`` the fingerprint's reading. ``concurrency`` parts are in flight at once, so one
        part's checksum overlaps another's transfer. ``cancel`` set stops between parts (what was sent stays
        on the server for the next call).
        """
        path = Path(path)
        if not path.is_file():
            raise ServiceError(path, "no such file", "give the path of a tomogram (.mrc)")
        size = path.stat().st_size
        clock = [time.perf_counter()]
        sha256, digests = file_digests(path, part_bytes, hash_progress)
        clock.append(time.perf_counter())
        body = {"filename": path.name, "size": size, "sha256": sha256, "part_size": part_bytes}
        session = self.request("POST", "/v1/uploads/init", json=body).json()
        upload_id = str(session["upload_id"])
        if int(session.get("part_size", part_bytes)) != part_bytes:
            part_bytes, digests = int(session["part_size"]), None
        count = int(session.get("parts_total") or max(1, math.ceil(size / part_bytes)))
        held = set(range(count)) if session.get("state") == "complete" else set(session.get("parts_received", []))
        partial = {int(i): int(n) for i, n in (session.get("partial") or {}).items() if int(i) not in held}
        missing = [i for i in range(count) if i not in held]
        counter = _Counter(sum(_part_length(i, size, part_bytes) for i in held) + sum(partial.values()), size, progress)
        if progress:
            progress(counter.done, size)
        if missing:
            plan = _PartPlan(path, upload_id, size, part_bytes, digests, partial)
            self._send_parts(plan, missing, counter, concurrency, cancel)
        clock.append(time.perf_counter())
        # the server checked the file as its parts arrived; after a server restart it reads it again (minutes for
        # 10 GB on a busy host)
        info = self.request("POST", f"/v1/uploads/{upload_id}/complete", timeout=max(300.0, size / (5 * MB))).json()
        return Upload(
            upload_id,
            sha256,
            size,
            part_bytes,
            count,
            len(held),
            counter.sent_bytes,
            counter.sent_parts,
            str(info["file_id"]),
            info.get("metadata") or {},
            _phases(("fingerprint", "parts", "complete"), [*clock, time.perf_counter()]),
        )

    def _send_parts(self, plan: _PartPlan, parts, counter, concurrency, cancel) -> None:
        queue = iter(parts)
        lock, failed = threading.Lock(), threading.Event()

        def stopped() -> bool:
            return failed.is_set() or (cancel is not None and cancel.is_set())

        def worker() -> None:
            with open(plan.path, "rb") as handle:
                while not stopped():
                    with lock:
                        index = next(queue, None)
                    if index is None:
                        return
                    self.send_part(handle, plan, index, counter)

        with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="seg-upload") as pool:
            futures = [pool.submit(worker) for _ in range(max(1, min(concurrency, len(parts))))]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in done if f.exception() is not None]
            if errors:
                failed.set()  # the other workers stop after their part
                raise errors[0]
        if stopped():
            raise ServiceError(
                plan.path, "upload stopped", "upload it again: the parts already sent are kept", code="cancelled"
            )

    def part_received(self, upload_id: str, index: int) -> int:
        """Bytes of part ``index`` the server kept from a cut transfer (0 when none, or when it cannot say)."""
        try:
            status = self.request("GET", f"/v1/uploads/{upload_id}", params={"part": index}, retry=False).json()
        except ServiceError:
            return 0
        return int((status.get("partial") or {}).get(str(index), 0))

    def send_part(self, handle, plan: _PartPlan, index: int, counter: _Counter) -> None:
        """PUT one part (from the byte the server holds of it) with its CRC32C; retried with backoff, resuming
        from what the server kept of a cut attempt; each attempt's bytes are counted as sent."""
        length = _part_length(index, plan.size, plan.part_bytes)
        data = os.pread(handle.fileno(), length, index * plan.part_bytes)
        digest = plan.digests[index] if plan.digests else part_digest(PART_CHECKSUM, data)
        start = credited = min(plan.partial.get(index, 0), length)  # counted as held by the upload's progress
        subject = f"part {index} of upload {plan.upload_id}"
        for attempt in range(self.backoff.attempts):
            response = None
            counter.sent(length - start)
            try:
                response = self.http.put(
                    f"/v1/uploads/{plan.upload_id}/part/{index}",
                    content=data[start:] if start else data,
                    headers={PART_HEADERS[PART_CHECKSUM]: digest, "X-Part-Offset": str(start),
                             "Content-Type": "application/octet-stream"},
                )  # fmt: skip
            except httpx.TransportError as exc:
                error = ServiceError(
                    subject,
                    f"the connection dropped ({type(exc).__name__})",
                    "upload the file again: only what the server does not hold is sent",
                    code="unreachable",
                    retryable=True,
                )
            else:
                if response.is_success:
                    counter.held(length - credited)
                    return
                error = error_from_response(subject, response)
                if error.code == "part_checksum_mismatch" and part_digest(PART_CHECKSUM, data) != digest:
                    raise ServiceError(
                        plan.path,
                        f"the file changed while it was uploaded (part {index} differs from its fingerprint)",
                        "upload it again when it is no longer being written",
                        code="file_changed",
                    )
            if not error.retryable or attempt == self.backoff.attempts - 1:
                raise error
            time.sleep(self.backoff.delay(attempt, _retry_after(response)))
            start = min(self.part_received(plan.upload_id, index), length)

    # -- jobs -----------------------------------------------------------------------------------------------

    def submit(self, options: JobOptions, *, file_id: str | None = None, server_path: str | None = None) -> Job:
        """Start a job on an uploaded file (``file_id``) or a file on the server (``server_path``)."""
        if (file_id is None) == (server_path is None):
            raise ServiceError("job", "give either an uploaded file's id or a server path", "upload the file first")
        body: dict = {"options": options.as_json()}
        if options.model:
            body["model"] = options.model
        if file_id is not None:
            body["file_id"] = file_id
        else:
            body["server_path"] = server_path
        return Job.from_json(self.request("POST", "/v1/jobs", json=body).json())

    def job(self, job_id: str) -> Job:
        return Job.from_json(self.get_json(f"/v1/jobs/{job_id}"))

    def jobs(self) -> list[Job]:
        return [Job.from_json(item) for item in self.get_json("/v1/jobs")["jobs"]]

    def cancel(self, job_id: str) -> Job:
        """Ask the server to cancel; the job ends ``canceled`` within seconds (409 ``job_finished`` if it ended)."""
        return Job.from_json(self.request("DELETE", f"/v1/jobs/{job_id}").json())

    def wait(self, job_id: str, *, poll: float = 2.0, progress: Callable[[Job], None] | None = None) -> Job:
        """Poll until the job finishes, every ``poll`` s (30 of the 60 requests a minute a token may make)."""
        while True:
            job = self.job(job_id)
            if progress:
                progress(job)
            if job.finished:
                return job
            time.sleep(poll)

    # -- previews -------------------------------------------------------------------------------------------

    def ws_url(self, job_id: str) -> str:
        scheme, netloc, path, _, _ = urlsplit(self.base_url)
        ws = {"http": "ws", "https": "wss"}.get(scheme, scheme)
        return urlunsplit((ws, netloc, f"{path}/v1/ws/jobs/{job_id}", "", ""))

    def preview_stream(self, job_id: str, on_message: Callable[[dict], None], **kwargs) -> PreviewStream:
        """A started ``PreviewStream`` calling ``on_message`` from its own thread; ``stop()`` it when done."""
        stream = PreviewStream(self, job_id, on_message, **kwargs)
        stream.start()
        return stream

    # -- artifacts ------------------------------------------------------------------------------------------

    def download(self, url: str, dest: Path, *, progress: Progress | None = None) -> Path:
        """Fetch a signed artifact URL into ``dest`` atomically (a cut transfer retries, never leaves half a file)."""
        dest = Path(dest)
        target = urljoin(self.base_url + "/", url)
        for attempt in range(self.backoff.attempts):
            response = None
            try:
                with atomic_path(dest) as tmp, self.http.stream("GET", target) as response:
                    if not response.is_success:
                        response.read()
                        raise error_from_response(f"GET {_without_query(target)}", response)
                    total = int(response.headers.get("Content-Length") or 0)
                    done = 0
                    with open(tmp, "wb") as out:
                        for chunk in response.iter_bytes(4 * MB):
                            out.write(chunk)
                            done += len(chunk)
                            if progress:
                                progress(done, total)
                    if total and done != total:
                        raise ServiceError(dest, f"got {done} of {total} bytes", retryable=True, code="short")
                return dest
            except httpx.TransportError as exc:
                error = ServiceError(
                    f"GET {_without_query(target)}", f"the download dropped ({exc})", code="unreachable", retryable=True
                )
            except ServiceError as exc:
                error = exc
            if not error.retryable or attempt == self.backoff.attempts - 1:
                raise error
            time.sleep(self.backoff.delay(attempt, _retry_after(response)))
        raise AssertionError("unreachable")  # pragma: no cover

    def download_artifacts(
        self, job: Job, folder: Path, names: tuple[str, ...] = ("mask.mrc", "stats.json")
    ) -> dict[str, Path]:
        """The named artifacts of a completed job into ``folder`` (fresh signed URLs from the job's record)."""
        if not job.artifacts:
            job = self.job(job.id)
        missing = [n for n in names if n not in job.artifacts]
        if missing:
            raise ServiceError(
                f"job {job.id}",
                f"no {', '.join(missing)} among its artifacts ({', '.join(job.artifacts) or 'none'})",
                "artifacts exist once the job is completed",
            )
        return {name: self.download(job.artifacts[name], Path(folder) / name) for name in names}


def _phases(names: tuple[str, ...], clock: list[float]) -> dict[str, float]:
    """Seconds between successive clock readings, by phase name."""
    return {name: round(b - a, 3) for name, a, b in zip(names, clock[:-1], clock[1:], strict=True)}


def _without_query(url: str) -> str:
    """A URL without its query (signatures stay out of messages and logs)."""
    return url.split("?", 1)[0]


@dataclass
class _PartPlan:
    """What the part senders of one upload share: the file, its parts' digests (None: hash each when sent) and
    the bytes the server kept of parts cut mid-transfer."""

    path: Path
    upload_id: str
    size: int
    part_bytes: int
    digests: list[str] | None
    partial: dict[int, int]


def _part_length(index: int, size: int, part_bytes: int) -> int:
    return max(0, min(part_bytes, size - index * part_bytes))


class _Counter:
    """Bytes the server holds (for progress) and bytes sent (what a resume is judged by), thread-safe."""

    def __init__(self, done: int, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = done, total, progress
        self.sent_bytes = self.sent_parts = 0
        self._lock = threading.Lock()

    def sent(self, length: int) -> None:
        with self._lock:
            self.sent_bytes += length
            self.sent_parts += 1

    def held(self, length: int) -> None:
        with self._lock:
            self.done += length
            done = self.done
        if self.progress:
            self.progress(done, self.total)


class PreviewStream(threading.Thread):
    """Follows a job's WebSocket: calls ``on_message(dict)`` per message, reconnecting with backoff.

    Preview messages get their decoded ``frame`` (``PreviewFrame``) added; one that does not decode is skipped
    (the next replaces it). The stream ends after a ``completed`` message, an ``error`` message that is not
    retryable (a failed or canceled job, a refused token), or ``stop()``. A dropped connection, or a retryable
    refusal (rate limited), is opened again after ``backoff`` (reset once a connection has worked); the server
    sends the current progress and newest preview on every connect. ``on_message`` runs on this thread: a GUI
    hands the message over to its own thread.
    """

    def __init__(
        self,
        client: SegmentationClient,
        job_id: str,
        on_message: Callable[[dict], None],
        *,
        backoff: Backoff | None = None,
        on_state: Callable[[str, int], None] | None = None,
    ) -> None:
        super().__init__(name=f"seg-preview-{job_id}", daemon=True)
        self.client, self.job_id, self.on_message = client, job_id, on_message
        self.backoff = backoff or Backoff(attempts=1 << 30, base=0.25, cap=10.0)
        self.on_state = on_state or (lambda state, count: None)
        self.connections = 0
        self.finished_with: str | None = None  # "completed" or the final error's code
        self._stop_event = threading.Event()
        self._socket = None

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop_event.set()
        socket = self._socket
        if socket is not None:
            socket.close()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        attempt = 0
        while not self._stop_event.is_set() and self.finished_with is None:
            try:
                if self._follow():
                    attempt = 0
            except Exception:  # a dropped or refused connection: reconnect, unless told to stop
                if self._stop_event.is_set():
                    return
            if self.finished_with is None and not self._stop_event.is_set():
                self.on_state("reconnecting", attempt + 1)
                self._stop_event.wait(self.backoff.delay(attempt))
                attempt += 1

    def _follow(self) -> bool:
        """One connection, until it ends; True when it delivered a message (the backoff starts again)."""
        connect = optional.require("websockets.sync.client", "napari", "the live preview stream").connect
        headers = {"Authorization": f"Bearer {self.client.token}"} if self.client.token else {}
        ssl = None
        if self.client.base_url.startswith("https") and isinstance(self.client.verify, str):
            import ssl as ssl_module

            ssl = ssl_module.create_default_context(cafile=self.client.verify)
        socket = connect(
            self.client.ws_url(self.job_id), additional_headers=headers, ssl=ssl, open_timeout=10, max_size=None
        )
        self._socket = socket
        self.connections += 1
        self.on_state("connected", self.connections)
        delivered = False
        with socket:
            for text in socket:
                message = json.loads(text)
                kind = message.get("type")
                if kind == "preview":
                    try:
                        message["frame"] = decode_preview(message)
                    except ServiceError:
                        continue
                if kind == "error" and message.get("retryable"):
                    return delivered  # e.g. rate limited: reconnect after the backoff
                delivered = True
                self.on_message(message)
                if kind == "completed":
                    self.finished_with = "completed"
                elif kind == "error":
                    self.finished_with = str(message.get("code") or "error")
                if self.finished_with:
                    return delivered
        return delivered
