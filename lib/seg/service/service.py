"""The service's rules: who may submit what, job views with fresh links, cancel, recovery after a restart.

``SegService`` ties the upload store, the job store and a ``JobRunner``
together; the FastAPI app (``labpipe.seg.service.app``) only translates HTTP.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labpipe import __version__
from labpipe.errors import LabpipeError
from labpipe.seg.artifacts import MASK_FILES
from labpipe.seg.jobs import JobState, job_state
from labpipe.seg.service.auth import Keys, Principal, check_signature, signed_path
from labpipe.seg.service.errors import ServiceError, invalid, not_found
from labpipe.seg.service.jobs import TERMINAL, JobRunner, JobStore
from labpipe.seg.service.settings import ServiceSettings
from labpipe.seg.service.uploads import UploadStore, check_id, iso

log = logging.getLogger("labpipe.seg.service")
OPTIONS = ("step_size", "mirroring", "fp16", "preview_factor", "preview_every")
STATE_POLL_S = 1.0  # a job's flow run is read at most this often, however many clients ask


@dataclass
class Environment:
    """What the server host offers: its models (name -> metadata) and GPUs; callables, read when asked."""

    models: Callable[[], dict[str, dict]]
    gpus: Callable[[], list[dict]] = list
    device: Callable[[], str] = lambda: "cpu"
    validate: Callable = None  # path -> TomogramInfo; labpipe.seg.mrc.validate_tomogram by default
    extra: dict = field(default_factory=dict)


def _options(raw: object) -> dict:
    """The job options a client may set, checked; unknown keys are refused (a typo must not pass silently)."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise invalid("options", "expected an object")
    unknown = sorted(set(raw) - {"step_size", "mirroring", "fp16", "preview_factor", "preview_every"})
    if unknown:
        raise invalid(
            "options", f"unknown options {unknown}", "step_size, mirroring, fp16, preview_factor, preview_every"
        )
    out: dict = {}
    if (step := raw.get("step_size")) is not None:
        if isinstance(step, bool) or not isinstance(step, int | float) or not 0 < step <= 1:
            raise invalid("options.step_size", "expected a number in (0, 1]")
        out["step_size"] = float(step)
    if (mirroring := raw.get("mirroring")) is not None:
        if not isinstance(mirroring, bool):
            raise invalid("options.mirroring", "expected true or false")
        out["mirroring"] = mirroring
    if (fp16 := raw.get("fp16")) is not None:
        if not isinstance(fp16, bool):
            raise invalid("options.fp16", "expected true (half precision on CUDA, as nnU-Net) or false (float32)")
        out["fp16"] = fp16
    if (factor := raw.get("preview_factor")) is not None:
        if isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= 16:
            raise invalid("options.preview_factor", "expected an integer from 1 to 16")
        out["preview_factor"] = factor
    if (every := raw.get("preview_every")) is not None:
        if isinstance(every, bool) or not isinstance(every, int | float) or (every != 0 and every < 0.5):
            raise invalid("options.preview_every", "expected seconds >= 0.5, or 0 for no previews")
        out["preview_every"] = float(every)
    return out


class SegService:
    def __init__(self, settings: ServiceSettings, keys: Keys, runner: JobRunner, environment: Environment) -> None:
        from labpipe.seg.mrc import validate_tomogram

        self.settings, self.keys, self.runner, self.env = settings, keys, runner, environment
        self.uploads = UploadStore(settings, environment.validate or validate_tomogram)
        self.jobs = JobStore(settings.data)
        self._checked: dict[str, float] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------- info

    def info(self, principal: Principal) -> dict:
        return {
            "version": __version__,
            "api": "v1",
            "user": principal.user,
            "scopes": sorted(principal.scopes),
            "device": self.env.device(),
            "gpus": self.env.gpus(),
            "models": list(self.env.models().values()),
            "default_model": self.settings.default_model,
            "limits": self.settings.limits(),
        }

    # ---------------------------------------------------------------------------------- jobs

    def _tomogram(self, principal: Principal, body: dict) -> tuple[Path, str | None, str | None, str]:
        """(path, file_id, server_path, display name) of the job's input, checked against the caller's rights."""
        file_id, server_path = body.get("file_id"), body.get("server_path")
        if bool(file_id) == bool(server_path):
            raise invalid("file_id/server_path", "give exactly one of them")
        if file_id:
            record = self.uploads.file_record(principal, str(file_id))
            return self.uploads.file_path(record["file_id"]), record["file_id"], None, record["filename"]
        if not isinstance(server_path, str) or not Path(server_path).is_absolute():
            raise invalid("server_path", "expected an absolute path on the server")
        path = Path(server_path).resolve()
        if not principal.admin and not any(path.is_relative_to(Path(p)) for p in principal.paths):
            raise ServiceError(
                403,
                "forbidden",
                f"{server_path} is outside the folders this token may read",
                "ask for a token with --path FOLDER, or upload the file",
            )
        if not path.is_file():
            raise not_found(f"file {server_path} on the server")
        return path, None, str(path), path.name

    def submit(self, principal: Principal, body: object) -> dict:
        principal.require("submit")
        if not isinstance(body, dict):
            raise invalid("body", "expected a JSON object")
        path, file_id, server_path, filename = self._tomogram(principal, body)
        model = body.get("model") or self.settings.default_model
        if not isinstance(model, str) or model not in self.env.models():
            known = ", ".join(self.env.models()) or "none"
            raise ServiceError(
                422, "unknown_model", f"model {model!r} is not on this server", f"choose one of: {known}"
            )
        options = _options(body.get("options"))
        if file_id:
            self.uploads.touch_file(file_id)  # the file's age counts from its last job
        job_id = uuid.uuid4().hex
        now = iso(time.time())
        record = {
            "job_id": job_id,
            "user": principal.user,
            "state": JobState.QUEUED.value,
            "model": model,
            "options": options,
            "file_id": file_id,
            "server_path": server_path,
            "filename": filename,
            "tomogram": str(path),
            "run": f"api-{job_id}",
            "flow_run_id": None,
            "flow_run_name": None,
            "progress": {"done": 0, "total": 0},
            "error": None,
            "created_at": now,
            "updated_at": now,
        }
        self.jobs.save(record)  # before the run exists: a crash here is finished by recover()
        try:
            self._start(record)
        except ServiceError:  # the client is told to retry: no second job may start from this record later
            shutil.rmtree(self.jobs.folder(job_id), ignore_errors=True)
            raise
        log.info("job %s by %s: model %s, flow run %s", job_id, principal.user, model, record["flow_run_id"])
        return self.view(record)

    def _parameters(self, record: dict) -> dict:
        return {
            "tomogram": record["tomogram"],
            "model": record["model"],
            "run": record["run"],
            "publish_dir": str(self.jobs.live(record["job_id"]).path),
            **record["options"],
        }

    def _start(self, record: dict) -> None:
        ref = self.runner.submit(record["job_id"], self._parameters(record))
        record.update(flow_run_id=ref.id, flow_run_name=ref.name, updated_at=iso(time.time()))
        self.jobs.save(record)

    def _owned(self, principal: Principal, job_id: str) -> dict:
        check_id(job_id, f"job {job_id}")
        record = self.jobs.load(job_id)
        if record is None or not principal.may_see(record["user"]):
            raise not_found(f"job {job_id}")
        return record

    def refresh(self, record: dict, *, force: bool = False) -> dict:
        """The record with its state read from the flow run (terminal states are final and not read again)."""
        if JobState(record["state"]) in TERMINAL or record["flow_run_id"] is None:
            return record
        job_id = record["job_id"]
        with self._lock:
            if not force and time.monotonic() - self._checked.get(job_id, 0.0) < STATE_POLL_S:
                return self.jobs.load(job_id) or record
            self._checked[job_id] = time.monotonic()
        status = self.runner.status(record["flow_run_id"])
        live = self.jobs.live(job_id)
        if status is None:
            state, error = (
                JobState.FAILED,
                {"code": "flow_run_lost", "message": "the job's flow run is gone", "hint": "submit the job again"},
            )
        else:
            state, error = job_state(status.type, status.name), None
            if state is JobState.FAILED:
                error = live.error() or {
                    "code": "job_failed",
                    "message": status.message or "the run failed",
                    "hint": "the server's Prefect UI shows the run's logs",
                }
            elif state is JobState.CANCELLED:
                error = {"code": "job_canceled", "message": "the job was canceled", "hint": ""}
            elif state is JobState.COMPLETED and live.result() is None:
                state, error = (
                    JobState.FAILED,
                    {"code": "job_failed", "hint": "", "message": "the run completed without publishing its artifacts"},
                )
        progress = live.progress() or record["progress"]
        changed = state.value != record["state"] or progress.get("done") != record["progress"].get("done")
        if changed:
            record.update(
                state=state.value,
                error=error and {**error, "retryable": False},
                progress={"done": progress.get("done", 0), "total": progress.get("total", 0)},
                updated_at=iso(time.time()),
            )
            self.jobs.save(record)
        return record

    def artifacts(self, record: dict) -> dict | None:
        """Fresh signed links to the finished job's files."""
        if record["state"] != JobState.COMPLETED.value:
            return None
        result = self.jobs.live(record["job_id"]).result() or {}
        out = {}
        for name in MASK_FILES:
            path = Path(result.get("files", {}).get(name, ""))
            url, expires = signed_path(self.keys, record["job_id"], name, self.settings.signed_url_ttl_s)
            out[name] = {
                "url": url,
                "expires_at": iso(expires),
                "bytes": path.stat().st_size if path.is_file() else None,
            }
        return out

    def view(self, record: dict) -> dict:
        hidden = {"tomogram", "run"}
        return {k: v for k, v in record.items() if k not in hidden} | {"artifacts": self.artifacts(record)}

    def job(self, principal: Principal, job_id: str) -> dict:
        return self.view(self.refresh(self._owned(principal, job_id)))

    def record(self, principal: Principal, job_id: str) -> dict:
        return self.refresh(self._owned(principal, job_id))

    def list_jobs(self, principal: Principal) -> list[dict]:
        return [self.view(self.refresh(r)) for r in self.jobs.all() if principal.may_see(r["user"])]

    def cancel(self, principal: Principal, job_id: str) -> dict:
        principal.require("submit")
        record = self.refresh(self._owned(principal, job_id), force=True)
        if JobState(record["state"]) in TERMINAL:
            raise ServiceError(409, "job_finished", f"job {job_id} is already {record['state']}", "nothing to cancel")
        if record["flow_run_id"] is None:  # recorded, never submitted: nothing runs
            record.update(state=JobState.CANCELLED.value, updated_at=iso(time.time()),
                          error={"code": "job_canceled", "message": "the job was canceled", "hint": "",
                                 "retryable": False})  # fmt: skip
            self.jobs.save(record)
            return self.view(record)
        self.runner.cancel(record["flow_run_id"])
        log.info("job %s: cancel requested by %s", job_id, principal.user)
        return self.view(self.refresh(record, force=True))

    def artifact_file(self, job_id: str, artifact: str, expires: str, sig: str) -> Path:
        """The file a signed link names (403 unless the signature and expiry hold, 404 if it is not there)."""
        check_signature(self.keys, job_id, artifact, expires, sig)
        if artifact not in MASK_FILES or not (record := self.jobs.load(check_id(job_id, "job"))):
            raise not_found(f"artifact {artifact}")
        path = Path((self.jobs.live(record["job_id"]).result() or {}).get("files", {}).get(artifact, ""))
        if not path.is_file():
            raise not_found(f"artifact {artifact} of job {job_id}")
        return path

    # ---------------------------------------------------------------------------------- recovery

    def recover(self) -> dict:
        """After a restart: start the runs of jobs recorded but not submitted, read every unfinished job's run."""
        started, read = 0, 0
        for record in self.jobs.all():
            if JobState(record["state"]) in TERMINAL:
                continue
            try:
                if record["flow_run_id"] is None:
                    self._start(record)  # the idempotency key finds a run made before the crash
                    started += 1
                self.refresh(record, force=True)
                read += 1
            except (ServiceError, LabpipeError, OSError) as exc:
                log.warning("job %s not reconciled yet: %s", record["job_id"], exc)
        return {"started": started, "reconciled": read, "uploads_removed": len(self.clean_stale())}

    def clean_stale(self, now: float | None = None) -> list[str]:
        """Remove stale uploads and unused files (not those of a job queued or running); returns their ids."""
        in_use = {r["file_id"] for r in self.jobs.all() if r.get("file_id") and JobState(r["state"]) not in TERMINAL}
        return self.uploads.clean_stale(now, in_use)
