"""The HTTP and WebSocket face of the segmentation service (the API of docs/segmentation.md, "The service API").

Every refusal is the one envelope ``{code, message, hint, retryable}``; nothing
logged carries a token, a signature or data (uvicorn's access log is off: a
signed link's query string is a credential). Handlers that touch the disk or
the orchestrator are plain functions (FastAPI runs them on its thread pool);
part uploads stream straight to their slot on disk.
"""

import asyncio
import base64
import contextlib
import logging
import time
import zlib

from fastapi import Body, FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from labpipe import __version__
from labpipe.seg.jobs import JobState
from labpipe.seg.service.auth import Principal, unauthenticated, verify_token
from labpipe.seg.service.errors import ServiceError
from labpipe.seg.service.jobs import TERMINAL
from labpipe.seg.service.limits import InFlight, RateLimiter
from labpipe.seg.service.service import SegService
from labpipe.seg.service.uploads import declared_checksums
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.websockets import WebSocketDisconnect

log = logging.getLogger("labpipe.seg.service")
WATCH_S = 0.05  # how often a WebSocket looks for a new preview or progress (a stat call)
PROGRESS_EVERY_S = 0.25
WRITE_BATCH_BYTES = 2 << 20  # a part's bytes go to disk in batches of this much (a thread writes while more arrive)


def _envelope(exc: ServiceError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.status, headers=exc.headers or None)


def encode_preview(header: dict, raw: bytes) -> dict:
    """A live preview as the WebSocket ``preview`` message's fields (zlib level 1: labels compress ~20x, fast)."""
    payload = base64.b64encode(zlib.compress(raw, 1)).decode()
    return {**header, "encoding": "zlib+base64", "payload": payload}


def create_app(service: SegService) -> FastAPI:
    """The API on ``service``; its lifespan reconciles jobs and uploads and cleans stale uploads periodically."""
    settings = service.settings
    limiter = RateLimiter(settings.rate_limit_per_minute)
    parts = InFlight(settings.parts_in_flight)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        async def recover():
            try:
                log.info("recovered: %s", await run_in_threadpool(service.recover))
            except Exception as exc:  # the orchestrator may be away: jobs are read again when asked
                log.warning("recovery incomplete: %s", exc)

        async def clean():
            every = min(settings.upload_max_age_s / 4, settings.file_max_age_s / 4, 600.0)
            while True:
                await asyncio.sleep(every)
                with contextlib.suppress(OSError):
                    await run_in_threadpool(service.clean_stale)

        tasks = [asyncio.create_task(recover()), asyncio.create_task(clean())]
        yield
        for task in tasks:
            task.cancel()

    app = FastAPI(
        title="labpipe segmentation service", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )

    @app.exception_handler(ServiceError)
    async def refused(_request, exc: ServiceError):
        return _envelope(exc)

    @app.exception_handler(RequestValidationError)
    async def malformed(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _envelope(ServiceError(400, "invalid_request", f"{where}: {first.get('msg', 'malformed request')}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        return _envelope(ServiceError(exc.status_code, code, str(exc.detail), "see docs/segmentation.md"))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _envelope(ServiceError(500, "internal", "the server failed on this request",
                                      "try again; if it persists, tell the admins (the server log has the detail)",
                                      retryable=True))  # fmt: skip

    def caller(headers, scope: str, *, counted: bool = True) -> Principal:
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated()
        principal = verify_token(service.keys, token.strip())
        if counted:
            limiter.hit(principal.token_id)
        principal.require(scope)
        return principal

    @app.get("/v1/healthz")
    def healthz() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/server/info")
    def info(request: Request) -> dict:
        return service.info(caller(request.headers, "read"))

    # ------------------------------------------------------------------------------------------ uploads

    @app.post("/v1/uploads/init")
    def init_upload(request: Request, body: dict = Body(...)) -> JSONResponse:
        principal = caller(request.headers, "submit")
        view, created = service.uploads.init(
            principal, body.get("filename"), body.get("size"), body.get("sha256"), body.get("part_size")
        )
        return JSONResponse(view, status_code=201 if created else 200)

    @app.get("/v1/uploads/{upload_id}")
    def upload_status(request: Request, upload_id: str, part: int | None = None) -> dict:
        return service.uploads.status(caller(request.headers, "read"), upload_id, part)

    @app.put("/v1/uploads/{upload_id}/part/{index}")
    async def put_part(request: Request, upload_id: str, index: int) -> dict:
        principal = caller(request.headers, "submit", counted=False)
        with parts.hold(principal.token_id):
            writer = await run_in_threadpool(
                service.uploads.part_writer, principal, upload_id, index, declared_checksums(request.headers),
                request.headers.get("x-part-offset"),
            )  # fmt: skip
            receiving = PartReceiver(writer)
            try:
                declared = request.headers.get("content-length")
                if declared and declared.isdigit():
                    writer.check_length(writer.start + int(declared))  # refused before a byte is read
                async for chunk in request.stream():
                    await receiving.take(chunk)
                await receiving.drain()
                done = await run_in_threadpool(service.uploads.finish_part, writer)
            except ClientDisconnect:
                # an ordinary event for a resumable upload, not a server failure: the bytes received are synced
                # and recorded (the client sends the rest), one line, and no traceback for Starlette to log
                with contextlib.suppress(ServiceError):  # what the server read but had not handed over yet
                    await receiving.take(_unread_body(request))
                kept = await receiving.keep()
                log.info("upload %s part %d: the client went away mid-part; %d bytes kept", upload_id, index, kept)
                return _envelope(ServiceError(400, "client_disconnected", "the connection closed mid-part",
                                              "send the rest of the part", retryable=True))  # fmt: skip
            finally:
                await receiving.settle()
                writer.close()
        held = await run_in_threadpool(service.uploads.status, principal, upload_id)
        return {"upload_id": upload_id, **done, "parts_received_count": len(held["parts_received"]),
                "parts_total": held["parts_total"]}  # fmt: skip

    @app.post("/v1/uploads/{upload_id}/complete")
    def complete_upload(request: Request, upload_id: str) -> dict:
        return service.uploads.complete(caller(request.headers, "submit"), upload_id)

    @app.delete("/v1/uploads/{upload_id}", status_code=204)
    def abort_upload(request: Request, upload_id: str) -> Response:
        service.uploads.abort(caller(request.headers, "submit"), upload_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------------------------------ jobs

    @app.post("/v1/jobs", status_code=201)
    def create_job(request: Request, body: dict = Body(...)) -> dict:
        return service.submit(caller(request.headers, "submit"), body)

    @app.get("/v1/jobs")
    def list_jobs(request: Request) -> dict:
        return {"jobs": service.list_jobs(caller(request.headers, "read"))}

    @app.get("/v1/jobs/{job_id}")
    def get_job(request: Request, job_id: str) -> dict:
        return service.job(caller(request.headers, "read"), job_id)

    @app.delete("/v1/jobs/{job_id}", status_code=202)
    def cancel_job(request: Request, job_id: str) -> dict:
        return service.cancel(caller(request.headers, "submit"), job_id)

    @app.get("/v1/files/{job_id}/{artifact}")
    def download(job_id: str, artifact: str, expires: str = "", sig: str = "") -> FileResponse:
        path = service.artifact_file(job_id, artifact, expires, sig)
        return FileResponse(path, filename=artifact, media_type="application/octet-stream")

    # ------------------------------------------------------------------------------------------ live

    @app.websocket("/v1/ws/jobs/{job_id}")
    async def watch(websocket: WebSocket, job_id: str) -> None:
        await websocket.accept()
        try:
            principal = caller(websocket.headers, "read")
            record = await run_in_threadpool(service.record, principal, job_id)
        except ServiceError as exc:
            await websocket.send_json({"type": "error", "job_id": job_id, **exc.envelope()})
            await websocket.close(code=4000 + exc.status if exc.status in (401, 403, 404, 429) else 1011)
            return
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await JobWatch(service, websocket, record).run()

    return app


def _unread_body(request: Request) -> bytes:
    """The body bytes uvicorn read from the socket but had not handed to the app when the client went away
    (its ``receive`` then answers ``http.disconnect`` and drops them): a cut part keeps them too."""
    cycle = getattr(request.receive, "__self__", None)
    body = getattr(cycle, "body", None) if getattr(cycle, "disconnected", False) else None
    return bytes(body) if isinstance(body, bytes | bytearray) else b""


class PartReceiver:
    """A part's body on its way to disk: batches written and hashed on a worker thread while the next arrives."""

    def __init__(self, writer) -> None:
        self.writer = writer
        self.batch: list[bytes] = []
        self.batched = 0
        self.pending: asyncio.Future | None = None

    async def take(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.writer.accept(len(chunk))  # 413 at once when the body overflows its slot
        self.batch.append(chunk)
        self.batched += len(chunk)
        if self.batched >= WRITE_BATCH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if self.pending is not None:
            await self.pending  # in order: the part's SHA-256 is a stream
        batch, self.batch, self.batched = self.batch, [], 0
        self.pending = asyncio.ensure_future(run_in_threadpool(self.writer.write, batch)) if batch else None

    async def drain(self) -> None:
        await self._flush()
        await self._flush()

    async def keep(self) -> int:
        """After a cut: what arrived is written, synced and recorded; returns the part's bytes held."""
        await self.drain()
        return await run_in_threadpool(self.writer.keep_partial)

    async def settle(self) -> None:
        """Wait for a write still running (before the file is closed), whatever ended the request."""
        if self.pending is not None:
            with contextlib.suppress(Exception):
                await self.pending
            self.pending = None


class JobWatch:
    """One WebSocket client of one job: progress and state changes, the newest preview, the end, keepalives."""

    def __init__(self, service: SegService, websocket: WebSocket, record: dict) -> None:
        self.service, self.ws, self.record = service, websocket, record
        self.job_id = record["job_id"]
        self.live = service.jobs.live(self.job_id)
        self.sent_at = time.monotonic()
        self.seq = 0
        self._preview = self._progress = None
        self._progress_at = 0.0
        self._gone = asyncio.Event()

    async def send(self, message: dict) -> None:
        await self.ws.send_json({**message, "job_id": self.job_id})
        self.sent_at = time.monotonic()

    async def _drain(self) -> None:
        """Read (and ignore) what the client sends: the way to learn it went away."""
        try:
            while True:
                await self.ws.receive_text()
        except Exception:
            self._gone.set()

    async def run(self) -> None:
        drain = asyncio.create_task(self._drain())
        keepalive = self.service.settings.keepalive_s
        next_read = 0.0
        try:
            while not self._gone.is_set():
                now = time.monotonic()
                if now >= next_read:
                    next_read = now + 0.5
                    try:
                        self.record = await run_in_threadpool(self.service.refresh, self.record)
                    except ServiceError as exc:  # the orchestrator is away: keep watching, read it again later
                        log.warning("job %s: state not read: %s", self.job_id, exc.message)
                        next_read = now + 5.0
                await self._maybe_progress(now)
                await self._maybe_preview()
                if JobState(self.record["state"]) in TERMINAL:
                    await self._finish()
                    return
                if time.monotonic() - self.sent_at >= keepalive:
                    await self.send({"type": "keepalive", "time": time.time()})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._gone.wait(), WATCH_S)
        finally:
            drain.cancel()

    async def _maybe_progress(self, now: float) -> None:
        live = self.live.progress() or {}
        current = (self.record["state"], live.get("done", self.record["progress"]["done"]),
                   live.get("total", self.record["progress"]["total"]))  # fmt: skip
        state_changed = self._progress is None or current[0] != self._progress[0]
        if current != self._progress and (state_changed or now - self._progress_at >= PROGRESS_EVERY_S):
            self._progress, self._progress_at = current, now
            await self.send({"type": "progress", "state": current[0], "done": current[1], "total": current[2]})

    async def _maybe_preview(self) -> None:
        version = self.live.preview_version()
        if version is None or version == self._preview:
            return
        found = await run_in_threadpool(self.live.read_preview)
        self._preview = version
        if found:
            self.seq += 1
            message = await run_in_threadpool(encode_preview, *found)
            await self.send({"type": "preview", "seq": self.seq, **message})

    async def _finish(self) -> None:
        if self.record["state"] == JobState.COMPLETED.value:
            artifacts = await run_in_threadpool(self.service.artifacts, self.record)
            await self.send({"type": "completed", "state": "completed", "artifacts": artifacts})
        else:
            error = self.record.get("error") or {"code": "job_failed", "message": "the job failed", "hint": ""}
            await self.send({"type": "error", "state": self.record["state"], "retryable": False, **error})
        await self.ws.close(code=1000)
