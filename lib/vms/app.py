"""The allocator: a FastAPI app over the VM tables.

Every data endpoint needs a bearer token (401 without a valid one, saying
whether it is unknown, revoked or expired; 403 for the wrong role or someone
else's VM): users request and release their own VMs, a client token heartbeats
for its own VM only, admin tokens manage. Only the page shell (``/``) and
``/health`` are open; neither carries data. Users see their own VMs and their
own VMs' events only, never another user's e-mail address. Every refusal is a
JSON body with ``error`` and ``detail``; malformed requests get 422 naming each
field at fault; no path answers a bare 500.

(No ``from __future__ import annotations`` here: FastAPI must see the dependency
aliases defined inside ``create_app`` as real objects, not strings.)
"""

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Annotated

import psycopg2
from fastapi import Depends, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from labpipe.errors import ConfigError, DatabaseError, LabpipeError
from labpipe.vms.feed import ChangeFeed
from labpipe.vms.launch import Launcher
from labpipe.vms.models import (
    CreateVms,
    DestroyVms,
    Heartbeat,
    Registration,
    Role,
    TokenCreate,
    Vm,
    VmRequest,
    VmState,
    redact_emails,
)
from labpipe.vms.page import PAGE
from labpipe.vms.pool import PoolExhausted
from labpipe.vms.settings import AllocatorSettings
from labpipe.vms.store import NoVmAvailable, Principal, StateConflict, TokenRefused, VmGone, VmNotFound, VmStore
from starlette.concurrency import run_in_threadpool

log = logging.getLogger("labpipe.vms.allocator")
bearer = HTTPBearer(auto_error=False)


class ApiError(LabpipeError):
    """A refused request: HTTP ``status``, a short ``error`` code and the ``detail`` the client reads."""

    def __init__(self, status: int, error: str, detail: str, **extra) -> None:
        super().__init__(error, detail)
        self.status, self.error, self.detail, self.extra = status, error, detail, extra

    def __reduce__(self):
        return (self.__class__, (self.status, self.error, self.detail), {"extra": self.extra})


def _json_error(status: int, error: str, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status, headers=headers)


def _field(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def public_vm(vm: Vm, principal: Principal) -> dict:
    """The VM as this caller may see it (provider internals and other users' addresses are for admins)."""
    data = vm.model_dump(mode="json")
    if principal.role is not Role.admin:
        data.pop("provider_ref", None)
        if vm.owner != principal.email and principal.vm_id != vm.id:
            data.update(owner=None, user_command=None)
        data["state_reason"] = redact_emails(data.get("state_reason"), keep=principal.email or data.get("owner"))
    return data


def visible_change(change: dict, who: Principal) -> dict | None:
    """A VM change as ``who`` may see it on /vms/events, or None when it is none of their business.

    Admins see every change; a client sees its own VM's; a user sees the changes of
    VMs they hold or held until this change (a release), never another address.
    """
    if who.role is Role.admin or change.get("op") == "resync":
        return change
    if who.role is Role.client:
        return change if change.get("id") == who.vm_id else None
    if who.email not in (change.get("owner"), change.get("old_owner")):
        return None
    return {**change, "reason": redact_emails(change.get("reason"), keep=who.email)}


def create_app(
    store: VmStore,
    settings: AllocatorSettings,
    *,
    launcher: Launcher | None = None,
    feed: ChangeFeed | None = None,
    on_change: list[Callable[[dict], None]] | None = None,
) -> FastAPI:
    """The allocator app. ``feed`` (a started ChangeFeed) drives /vms/events and ``on_change`` sinks."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        unsubscribe = [feed.subscribe(sink) for sink in on_change or []] if feed else []
        yield
        for undo in unsubscribe:
            undo()

    app = FastAPI(title="labpipe VM allocator", version="1", lifespan=lifespan)
    app.state.store, app.state.settings, app.state.launcher = store, settings, launcher

    # -- errors: always JSON, always naming what was wrong ----------------------------------------

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"field": _field(e.get("loc", ())), "problem": e.get("msg", "invalid")} for e in exc.errors()]
        fields = sorted({d["field"] for d in details})
        return JSONResponse({"error": "invalid_request", "fields": fields, "detail": details}, status_code=422)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _json_error(exc.status, exc.error, exc.detail, headers, **exc.extra)

    @app.exception_handler(NoVmAvailable)
    async def none_free(request: Request, exc: NoVmAvailable) -> JSONResponse:
        return _json_error(
            409, "no_vm_available", exc.problem, available=exc.available, matching=exc.matching, hint=exc.hint
        )

    @app.exception_handler(VmNotFound)
    async def not_found(request: Request, exc: VmNotFound) -> JSONResponse:
        return _json_error(404, "vm_not_found", str(exc))

    @app.exception_handler(VmGone)
    async def gone(request: Request, exc: VmGone) -> JSONResponse:
        return _json_error(410, "vm_gone", str(exc))

    @app.exception_handler(StateConflict)
    async def conflict(request: Request, exc: StateConflict) -> JSONResponse:
        return _json_error(409, "state_conflict", str(exc))

    @app.exception_handler(TokenRefused)
    async def token_refused(request: Request, exc: TokenRefused) -> JSONResponse:
        return _json_error(401, exc.error, exc.problem, {"WWW-Authenticate": "Bearer"}, hint=exc.hint)

    @app.exception_handler(PermissionError)
    async def forbidden(request: Request, exc: PermissionError) -> JSONResponse:
        return _json_error(403, "forbidden", str(exc))

    @app.exception_handler(PoolExhausted)
    async def busy(request: Request, exc: PoolExhausted) -> JSONResponse:
        return _json_error(503, "busy", str(exc), {"Retry-After": "1"})

    @app.exception_handler(DatabaseError)
    async def database_down(request: Request, exc: DatabaseError) -> JSONResponse:
        return _json_error(503, "database_unavailable", str(exc), {"Retry-After": "5"})

    @app.exception_handler(psycopg2.OperationalError)
    @app.exception_handler(psycopg2.InterfaceError)
    async def connection_lost(request: Request, exc: Exception) -> JSONResponse:
        # the server restarted under a pooled connection; the pool already dropped it, a retry gets a fresh one
        return _json_error(
            503, "database_unavailable", f"database connection lost: {exc}".strip(), {"Retry-After": "1"}
        )

    @app.exception_handler(LabpipeError)
    async def labpipe_error(request: Request, exc: LabpipeError) -> JSONResponse:
        return _json_error(400, type(exc).__name__, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _json_error(500, "internal", f"{type(exc).__name__}: the allocator logged the details")

    # -- who is asking ------------------------------------------------------------------------------

    def principal(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(401, "unauthorized", "a bearer token is required (Authorization: Bearer <token>)")
        return store.check_token(credentials.credentials)  # TokenRefused: 401 saying unknown, revoked or expired

    def needs(*roles: Role) -> Callable[..., Principal]:
        def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
            if who.role not in roles:
                allowed = " or ".join(r.value for r in roles)
                raise ApiError(403, "forbidden", f"a {who.role.value} token cannot do this; it needs {allowed}")
            return who

        return check

    Anyone = Annotated[Principal, Depends(principal)]
    User = Annotated[Principal, Depends(needs(Role.user, Role.admin))]
    Client = Annotated[Principal, Depends(needs(Role.client))]
    Admin = Annotated[Principal, Depends(needs(Role.admin))]

    def own_vm(who: Principal, vm_id: int) -> None:
        if who.vm_id != vm_id:
            raise ApiError(403, "forbidden", f"this client token belongs to VM {who.vm_id}, not VM {vm_id}")

    def launcher_or_503() -> Launcher:
        if launcher is None:
            raise ApiError(503, "no_launcher", "this allocator was started without a launcher for flows")
        return launcher

    # -- open ---------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE

    @app.get("/health")
    def health() -> dict:
        try:
            store.counts()
            return {"status": "ok"}
        except DatabaseError:
            raise ApiError(503, "database_unavailable", "the VM database does not answer") from None

    @app.get("/whoami")
    def whoami(who: Anyone) -> dict:
        return {"role": who.role.value, "email": who.email, "vm_id": who.vm_id}

    # -- users --------------------------------------------------------------------------------------

    @app.post("/vms/request")
    def request_vm(body: VmRequest, who: User) -> dict:
        if who.role is Role.user and body.email != who.email:
            raise ApiError(403, "forbidden", f"this token belongs to {who.email}; it cannot request for {body.email}")
        claim = store.claim(
            body.email,
            min_gpu_memory_mb=body.min_gpu_memory_mb,
            require_gpu=body.require_gpu,
            user_command=body.command,
            max_per_user=settings.max_vms_per_user,
        )
        return {"vm": public_vm(claim.vm, who), "already_held": claim.already_held}

    @app.post("/vms/{vm_id}/release")
    def release_vm(vm_id: int, who: User) -> dict:
        return {"vm": public_vm(store.release(vm_id, who), who)}

    @app.get("/vms")
    def list_vms(
        who: Anyone, state: Annotated[list[VmState] | None, Query(description="Only these states.")] = None
    ) -> dict:
        if who.role is Role.admin:
            vms = store.list(states=state)
        elif who.role is Role.user:
            vms = store.list(states=state, owner=who.email)
        else:
            vms = store.list(ids=[who.vm_id])
        return {"vms": [public_vm(vm, who) for vm in vms], "counts": store.counts()}

    @app.get("/vms/events")
    async def events(request: Request, who: Anyone) -> StreamingResponse:
        """Server-sent events: one ``data:`` line per VM change the caller may see (``visible_change``)."""
        if feed is None:
            raise ApiError(503, "no_feed", "this allocator runs without a change feed")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)

        def enqueue(change: dict) -> None:
            change = visible_change(change, who)
            if change is None:
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, change)

        async def stream() -> AsyncIterator[str]:
            unsubscribe = feed.subscribe(enqueue)
            try:
                yield ": connected\n\n"
                while not await request.is_disconnected():
                    try:
                        change = await asyncio.wait_for(queue.get(), timeout=15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"data: {json.dumps(change, default=str)}\n\n"
            finally:
                unsubscribe()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/vms/{vm_id}")
    def get_vm(vm_id: int, who: Anyone) -> dict:
        vm = store.get(vm_id)
        if who.role is Role.client:
            own_vm(who, vm_id)
        elif who.role is Role.user and vm.owner != who.email:
            raise ApiError(403, "forbidden", f"VM {vm_id} is not held by {who.email}")
        return {"vm": public_vm(vm, who)}

    @app.get("/vms/{vm_id}/wait")
    async def wait_vm(
        vm_id: int,
        who: Anyone,
        state: Annotated[str | None, Query(max_length=32)] = None,
        owner: Annotated[str | None, Query(max_length=254)] = None,
        timeout: Annotated[float, Query(ge=0, le=60)] = 25.0,
    ) -> dict:
        """Long poll: answers as soon as the VM's state or owner differs from the given ones (or at timeout)."""
        if who.role is Role.client:
            own_vm(who, vm_id)
        elif who.role is Role.user:
            raise ApiError(403, "forbidden", "only the VM's client and admins wait on a VM")
        changed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake(change: dict) -> None:
            if change.get("id") == vm_id or change.get("op") == "resync":
                loop.call_soon_threadsafe(changed.set)

        unsubscribe = feed.subscribe(wake) if feed else (lambda: None)
        try:
            vm = await run_in_threadpool(store.get, vm_id)
            if vm.state.value == state and (vm.owner or "") == (owner or ""):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
                vm = await run_in_threadpool(store.get, vm_id)
        finally:
            unsubscribe()
        return public_vm(vm, who)

    # -- clients ------------------------------------------------------------------------------------

    @app.post("/vms/register")
    def register(body: Registration, who: Client) -> dict:
        return public_vm(store.register(who.vm_id, body), who)

    @app.post("/vms/{vm_id}/heartbeat")
    def heartbeat(vm_id: int, body: Heartbeat, who: Client) -> dict:
        own_vm(who, vm_id)
        return public_vm(store.heartbeat(vm_id, body), who)

    # -- admins -------------------------------------------------------------------------------------

    @app.post("/admin/vms", status_code=202)
    def create(body: CreateVms, who: Admin) -> dict:
        key = body.request_key or f"api-{secrets.token_hex(6)}"
        return {"request_key": key, **launcher_or_503().create(body.count, body.command, key)}

    @app.post("/admin/vms/destroy", status_code=202)
    def destroy(body: DestroyVms, who: Admin) -> dict:
        if not body.ids and not body.states:
            raise ApiError(422, "invalid_request", "name VMs by ids or states", fields=["ids", "states"])
        ids = sorted(set(body.ids) | {vm.id for vm in store.list(states=body.states)} if body.states else set(body.ids))
        if body.ids:
            known = {vm.id for vm in store.list(ids=body.ids)}
            if missing := sorted(set(body.ids) - known):
                raise ApiError(404, "vm_not_found", f"no VM has id {missing}")
        if not ids:
            return {"ids": [], "detail": "no VM matched"}
        return {"ids": ids, **launcher_or_503().destroy(ids)}

    @app.post("/admin/reap", status_code=202)
    def reap_now(who: Admin) -> dict:
        return launcher_or_503().reap()

    @app.get("/admin/vms/{vm_id}/events")
    def history(vm_id: int, who: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        store.get(vm_id)
        return {"events": store.events(vm_id, limit)}

    @app.post("/admin/tokens", status_code=201)
    def new_token(body: TokenCreate, who: Admin) -> dict:
        if body.role is Role.client:
            raise ApiError(422, "invalid_request", "client tokens are made with their VM", fields=["role"])
        lifetime = timedelta(days=body.lifetime_days) if body.lifetime_days else None
        label = body.label or f"issued by API for {body.email or 'admin'}"
        try:
            issued = store.issue(body.role, email=body.email, label=label, lifetime=lifetime)
        except ConfigError as exc:
            raise ApiError(422, "invalid_request", str(exc), fields=[exc.subject]) from exc
        return {"token": issued.token, "id": issued.id, "role": body.role.value, "email": body.email,
                "expires_at": issued.expires_at.isoformat() if issued.expires_at else None}  # fmt: skip

    @app.get("/admin/tokens")
    def tokens(who: Admin, email: Annotated[str | None, Query(max_length=254)] = None) -> dict:
        return {"tokens": jsonable_encoder(store.list_tokens(email=email))}

    @app.post("/admin/tokens/{token_id}/revoke")
    def revoke_token(token_id: int, who: Admin) -> dict:
        if not store.list_tokens(ids=[token_id]):
            raise ApiError(404, "token_not_found", f"no token has id {token_id}")
        return {"revoked": store.revoke_tokens(ids=[token_id])}

    return app
