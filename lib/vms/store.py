"""The VM tables in PostgreSQL: states, claims, heartbeats, tokens, and a change feed.

Plain SQL in one schema (``<prefix>_vms``), not DataJoint: a claim is one
``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)`` statement, so
concurrent requests never get the same VM (LabLink double-booked VMs in a
22-VM burst with read-then-write). A trigger writes every change of state,
owner or GPU health to ``vm_events`` and sends it with ``pg_notify`` on the
channel ``<schema>_changes``; heartbeats that change nothing but the time are
not events. Every time is the server's ``now()``, so hosts' clocks never matter.

Tokens are stored as SHA-256 hashes only, each with an id (to list and revoke
it), an expiry per role (``TokenLifetimes``) and a revocation time; every
request checks them, so a revocation takes effect on the next request.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg2.extras
from labpipe.config import Settings, get_settings
from labpipe.db.settings import DatabaseSettings
from labpipe.db.target import DatabaseTarget
from labpipe.errors import ConfigError, ConflictError, LabpipeError
from labpipe.files import atomic_path
from labpipe.vms.models import GpuFacts, Heartbeat, Registration, Role, Vm, VmState
from labpipe.vms.pool import ConnectionPool
from labpipe.vms.settings import AllocatorSettings, TokenLifetimes, VmLimits

SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,54}$")
TOKEN_PREFIX = {Role.user: "lpu_", Role.client: "lpc_", Role.admin: "lpa_"}
LIVE_STATES = (VmState.initializing, VmState.available, VmState.in_use, VmState.failed)


class VmNotFound(LabpipeError):
    """No VM has this id."""


class VmGone(LabpipeError):
    """The VM is being destroyed or was destroyed."""


class StateConflict(ConflictError):
    """The VM is not in a state that allows this."""


class TokenRefused(LabpipeError):
    """A bearer token that is unknown, revoked or expired; ``error`` is the API's error code."""

    def __init__(self, error: str, problem: str, hint: str) -> None:
        super().__init__("bearer token", problem, hint)
        self.error = error

    def __reduce__(self):
        return (self.__class__, (self.error, self.problem, self.hint))


class NoVmAvailable(LabpipeError):
    """No available VM fits the request."""

    def __init__(self, subject: object, problem: str, hint: str, available: int, matching: int) -> None:
        super().__init__(subject, problem, hint)
        self.available, self.matching = available, matching


@dataclass(frozen=True)
class Principal:
    """Who a bearer token stands for."""

    role: Role
    email: str | None = None
    vm_id: int | None = None


@dataclass(frozen=True)
class IssuedToken:
    """A token as issued: the secret (shown once), its id and when it expires (None: with its VM)."""

    token: str
    id: int
    role: Role
    email: str | None
    expires_at: datetime | None


@dataclass(frozen=True)
class NewVm:
    """A VM row waiting for its provisioner, with the client token only it may see."""

    id: int
    hostname: str
    client_token: str
    command: list[str]


@dataclass(frozen=True)
class Claim:
    vm: Vm
    already_held: bool


@dataclass(frozen=True)
class ReapAction:
    vm: Vm
    action: str  # "reboot" or "fail"
    why: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _ddl(s: str, channel: str) -> str:
    states = ", ".join(f"'{state.value}'" for state in VmState)
    return f"""
CREATE SCHEMA IF NOT EXISTS "{s}";
CREATE TABLE IF NOT EXISTS "{s}".vms (
    id             bigserial PRIMARY KEY,
    hostname       text NOT NULL UNIQUE,
    state          text NOT NULL DEFAULT 'initializing' CHECK (state IN ({states})),
    state_reason   text NOT NULL DEFAULT '',
    owner          text,
    address        text,
    connection     jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    command        jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(command) = 'array'),
    user_command   jsonb CHECK (user_command IS NULL OR jsonb_typeof(user_command) = 'array'),
    command_state  text,
    provisioner    text NOT NULL,
    provider_ref   jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    request_key    text,
    gpu_present    boolean,
    gpu_healthy    boolean,
    gpu_name       text,
    gpu_memory_mb  integer,
    gpu_detail     text,
    gpu_checked_at timestamptz,
    heartbeat_status text,
    client_pid     integer,
    reboots        integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    state_since    timestamptz NOT NULL DEFAULT now(),
    registered_at  timestamptz,
    last_heartbeat timestamptz,
    claimed_at     timestamptz,
    released_at    timestamptz,
    CHECK (state <> 'in_use' OR owner IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS vms_state_idx ON "{s}".vms (state, id);
CREATE INDEX IF NOT EXISTS vms_owner_idx ON "{s}".vms (owner) WHERE state = 'in_use';
CREATE INDEX IF NOT EXISTS vms_request_key_idx ON "{s}".vms (request_key);
CREATE TABLE IF NOT EXISTS "{s}".tokens (
    token_hash  text PRIMARY KEY,
    role        text NOT NULL CHECK (role IN ('user', 'client', 'admin')),
    email       text,
    vm_id       bigint REFERENCES "{s}".vms (id),
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (role <> 'client' OR vm_id IS NOT NULL),
    CHECK (role <> 'user' OR email IS NOT NULL)
);
ALTER TABLE "{s}".tokens ADD COLUMN IF NOT EXISTS id bigserial;
ALTER TABLE "{s}".tokens ADD COLUMN IF NOT EXISTS expires_at timestamptz;
CREATE UNIQUE INDEX IF NOT EXISTS tokens_id_idx ON "{s}".tokens (id);
CREATE INDEX IF NOT EXISTS tokens_email_idx ON "{s}".tokens (email);
CREATE TABLE IF NOT EXISTS "{s}".vm_events (
    id        bigserial PRIMARY KEY,
    vm_id     bigint NOT NULL,
    hostname  text,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    op        text NOT NULL,
    old_state text,
    new_state text,
    owner     text,
    reason    text
);
CREATE INDEX IF NOT EXISTS vm_events_vm_idx ON "{s}".vm_events (vm_id, id);
CREATE OR REPLACE FUNCTION "{s}".vm_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    previous text;
    previous_owner text;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_OP = 'UPDATE' THEN previous := OLD.state; previous_owner := OLD.owner; END IF;
    INSERT INTO "{s}".vm_events (vm_id, hostname, op, old_state, new_state, owner, reason)
        VALUES (r.id, r.hostname, TG_OP, previous, r.state, r.owner, r.state_reason);
    PERFORM pg_notify(TG_ARGV[0], json_build_object(
        'id', r.id, 'hostname', r.hostname, 'op', TG_OP, 'old_state', previous, 'state', r.state,
        'owner', r.owner, 'old_owner', previous_owner, 'reason', left(r.state_reason, 400),
        'gpu_healthy', r.gpu_healthy,
        'at', clock_timestamp())::text);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER vm_inserted_or_deleted AFTER INSERT OR DELETE ON "{s}".vms
    FOR EACH ROW EXECUTE FUNCTION "{s}".vm_changed('{channel}');
CREATE OR REPLACE TRIGGER vm_updated AFTER UPDATE ON "{s}".vms FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.owner IS DISTINCT FROM NEW.owner
          OR OLD.gpu_healthy IS DISTINCT FROM NEW.gpu_healthy OR OLD.gpu_present IS DISTINCT FROM NEW.gpu_present)
    EXECUTE FUNCTION "{s}".vm_changed('{channel}');
"""


def resolve_vm_database(
    settings: AllocatorSettings, db_settings: DatabaseSettings | None = None, env: Settings | None = None
) -> tuple[DatabaseTarget, str]:
    """The PostgreSQL server and schema of the VM tables: the block's URL, else the lab database."""
    from labpipe.db.connect import resolve_target

    env = env or get_settings()
    if settings.database_url is not None:
        target = DatabaseTarget.from_url(settings.database_url.get_secret_value())
    else:
        target = resolve_target(db_settings, env)
    if target.backend != "postgresql":
        raise ConfigError(
            target.url,
            "VM allocation needs PostgreSQL (claims use SELECT ... FOR UPDATE SKIP LOCKED, changes LISTEN/NOTIFY)",
            "set the VM allocation block's database_url to a postgresql:// server",
        )
    prefix = db_settings.schema_prefix if db_settings else env.schema_prefix
    return target, settings.schema_name or f"{prefix}_vms"


class VmStore:
    """The VM tables of one schema on one PostgreSQL server, through a bounded pool."""

    def __init__(
        self,
        target: DatabaseTarget,
        schema: str,
        *,
        pool_size: int = 10,
        pool_wait: float = 10.0,
        token_lifetimes: TokenLifetimes | None = None,
    ) -> None:
        if target.backend != "postgresql":
            raise ConfigError(target.url, "VM allocation needs PostgreSQL", "use a postgresql:// database")
        if not SCHEMA_NAME.match(schema):
            raise ConfigError(schema, "not a usable schema name", "lower-case letters, digits and _, at most 55")
        self.target, self.schema = target, schema
        self.channel = f"{schema}_changes"
        self.pool = ConnectionPool(target, size=pool_size, wait=pool_wait)
        self.token_lifetimes = token_lifetimes or TokenLifetimes()
        # what "now" is for token expiry; None: the database's now() (tests set a clock to jump ahead)
        self.clock: Callable[[], datetime] | None = None

    @classmethod
    def open(cls, settings: AllocatorSettings, db_settings: DatabaseSettings | None = None) -> VmStore:
        target, schema = resolve_vm_database(settings, db_settings)
        store = cls(
            target,
            schema,
            pool_size=settings.pool_size,
            pool_wait=settings.pool_wait,
            token_lifetimes=settings.token_lifetimes,
        )
        store.ensure_schema()
        return store

    def close(self) -> None:
        self.pool.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _cursor(self, conn):
        return conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)

    def _q(self, sql: str) -> str:
        return sql.replace("{s}", f'"{self.schema}"')

    def _fetch(self, sql: str, args: dict | tuple | None = None) -> list[dict]:
        with self.pool.connection() as conn, self._cursor(conn) as cur:
            cur.execute(self._q(sql), args)
            return list(cur.fetchall()) if cur.description else []

    def ensure_schema(self) -> None:
        """Create the schema, tables and trigger if missing (safe from several processes at once)."""
        with self.pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"labpipe-vms-ddl-{self.schema}",))
            cur.execute(_ddl(self.schema, self.channel))
            # tokens issued before tokens expired get the lifetime of their role, counted from their issue
            for role in (Role.user, Role.admin, Role.client):
                seconds = self._lifetime_seconds(role)
                if seconds is not None:
                    cur.execute(
                        self._q(
                            "UPDATE {s}.tokens SET expires_at = created_at + make_interval(secs => %s) "
                            "WHERE expires_at IS NULL AND role = %s"
                        ),
                        (seconds, role.value),
                    )

    def drop_schema(self) -> None:
        with self.pool.connection() as conn, conn.cursor() as cur:
            cur.execute(self._q("DROP SCHEMA IF EXISTS {s} CASCADE"))

    # -- tokens ---------------------------------------------------------------------------------

    def _lifetime_seconds(self, role: Role) -> float | None:
        days = {
            Role.user: self.token_lifetimes.user_days,
            Role.admin: self.token_lifetimes.admin_days,
            Role.client: self.token_lifetimes.client_days,
        }[Role(role)]
        return None if days is None else days * 86400.0

    def _now(self) -> datetime | None:
        return self.clock() if self.clock is not None else None

    def issue_token(
        self,
        role: Role,
        *,
        email: str | None = None,
        vm_id: int | None = None,
        label: str = "",
        lifetime: timedelta | None = None,
    ) -> str:
        """A new bearer token; only its hash is stored, so this is the one time it is seen.

        It expires after ``lifetime``, else after its role's lifetime (``TokenLifetimes``).
        """
        return self.issue(role, email=email, vm_id=vm_id, label=label, lifetime=lifetime).token

    def issue(
        self,
        role: Role,
        *,
        email: str | None = None,
        vm_id: int | None = None,
        label: str = "",
        lifetime: timedelta | None = None,
    ) -> IssuedToken:
        """``issue_token`` with the new token's id and expiry."""
        role = Role(role)
        if role is Role.user and not email:
            raise ConfigError("email", "a user token needs the user's email")
        if role is Role.client and vm_id is None:
            raise ConfigError("vm_id", "a client token belongs to one VM")
        seconds = lifetime.total_seconds() if lifetime is not None else self._lifetime_seconds(role)
        token = TOKEN_PREFIX[role] + secrets.token_urlsafe(32)
        (row,) = self._fetch(
            "INSERT INTO {s}.tokens (token_hash, role, email, vm_id, label, expires_at) VALUES "
            "(%(hash)s, %(role)s, %(email)s, %(vm_id)s, %(label)s, CASE WHEN %(secs)s::float8 IS NULL THEN NULL "
            "ELSE coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(secs)s::float8) END) "
            "RETURNING id, expires_at",
            {
                "hash": hash_token(token),
                "role": role.value,
                "email": email,
                "vm_id": vm_id,
                "label": label,
                "secs": seconds,
                "now": self._now(),
            },
        )
        return IssuedToken(token, row["id"], role, email, row["expires_at"])

    def check_token(self, token: str) -> Principal:
        """Who ``token`` stands for; ``TokenRefused`` saying why when it is unknown, revoked or expired."""
        if not token or len(token) > 200:
            raise TokenRefused("unauthorized", "the token is malformed", "use the token exactly as it was issued")
        rows = self._fetch(
            "SELECT role, email, vm_id, revoked_at, expires_at, coalesce(%s::timestamptz, now()) AS now "
            "FROM {s}.tokens WHERE token_hash = %s",
            (self._now(), hash_token(token)),
        )
        if not rows:
            raise TokenRefused("unauthorized", "the token is unknown", "ask an admin for a token")
        row = rows[0]
        if row["revoked_at"] is not None:
            raise TokenRefused(
                "token_revoked",
                f"this {row['role']} token was revoked at {row['revoked_at']:%Y-%m-%d %H:%M:%S %Z}",
                "ask an admin for a new token",
            )
        if row["expires_at"] is not None and row["expires_at"] <= row["now"]:
            raise TokenRefused(
                "token_expired",
                f"this {row['role']} token expired at {row['expires_at']:%Y-%m-%d %H:%M:%S %Z}",
                "ask an admin for a new token (`labpipe vms token create`)",
            )
        return Principal(Role(row["role"]), row["email"], row["vm_id"])

    def authenticate(self, token: str) -> Principal | None:
        """Who ``token`` stands for, or None if it is unknown, revoked or expired."""
        try:
            return self.check_token(token)
        except TokenRefused:
            return None

    def list_tokens(
        self, *, role: Role | None = None, email: str | None = None, ids: list[int] | None = None
    ) -> list[dict]:
        """Every token's record (never the token or its hash), with ``status`` active, expired or revoked."""
        sql = (
            "SELECT id, role, email, vm_id, label, created_at, expires_at, revoked_at, CASE "
            "WHEN revoked_at IS NOT NULL THEN 'revoked' "
            "WHEN expires_at IS NOT NULL AND expires_at <= coalesce(%s::timestamptz, now()) THEN 'expired' "
            "ELSE 'active' END AS status FROM {s}.tokens WHERE true"
        )
        args: list = [self._now()]
        if role is not None:
            sql += " AND role = %s"
            args.append(Role(role).value)
        if email is not None:
            sql += " AND email = %s"
            args.append(email)
        if ids is not None:
            sql += " AND id = ANY(%s)"
            args.append(list(ids))
        return self._fetch(sql + " ORDER BY id", tuple(args))

    def revoke_tokens(self, *, ids: list[int] | None = None, email: str | None = None) -> list[int]:
        """Revoke tokens by id, or every token of ``email``; returns the ids revoked now (not revoked before)."""
        if not ids and not email:
            raise ConfigError("tokens", "name tokens to revoke by id or by email")
        rows = self._fetch(
            "UPDATE {s}.tokens SET revoked_at = now() WHERE revoked_at IS NULL AND "
            "(id = ANY(%s) OR (%s::text IS NOT NULL AND email = %s)) RETURNING id",
            (list(ids or []), email, email),
        )
        return sorted(row["id"] for row in rows)

    def revoke_client_tokens(self, vm_id: int) -> int:
        rows = self._fetch(
            "UPDATE {s}.tokens SET revoked_at = now() WHERE vm_id = %s AND role = 'client' AND revoked_at IS NULL "
            "RETURNING token_hash",
            (vm_id,),
        )
        return len(rows)

    def rotate_client_token(self, vm_id: int) -> str:
        """Revoke the VM's client tokens and issue a new one (a rebooted VM's old client is shut out)."""
        self.revoke_client_tokens(vm_id)
        return self.issue_token(Role.client, vm_id=vm_id, label="client")

    def ensure_admin_token(self, path: Path) -> tuple[str, bool]:
        """The admin token kept in ``path`` (mode 0600), issuing one if the file is missing or stale."""
        path = Path(path)
        if path.exists():
            token = path.read_text().strip()
            principal = self.authenticate(token)
            if principal is not None and principal.role is Role.admin:
                return token, False
        token = self.issue_token(Role.admin, label=f"bootstrap {path}")
        with atomic_path(path) as tmp:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
        return token, True

    # -- creating and provisioning --------------------------------------------------------------

    def add_vms(
        self, count: int, *, provisioner: str, command: list[str] | None = None, request_key: str | None = None
    ) -> list[NewVm]:
        """Rows for ``count`` VMs (initializing) and a client token each; the VMs still to be provisioned.

        With a ``request_key`` the call is idempotent: a repeat makes no more rows,
        and returns (with fresh tokens) the rows of that key not provisioned yet.
        """
        command = list(command or [])
        key = request_key or secrets.token_hex(8)
        with self.pool.connection() as conn, self._cursor(conn) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"labpipe-vms-create-{self.schema}-{key}",))
            cur.execute(self._q("SELECT count(*) AS n FROM {s}.vms WHERE request_key = %s"), (key,))
            missing = max(0, count - cur.fetchone()["n"])
            if missing:
                cur.execute(
                    self._q(
                        "INSERT INTO {s}.vms (id, hostname, provisioner, command, request_key, state_reason) "
                        "SELECT id, 'vm-' || lpad(id::text, 4, '0'), %s, %s::jsonb, %s, 'created' FROM "
                        "(SELECT nextval(pg_get_serial_sequence(%s, 'id')) AS id FROM generate_series(1, %s)) AS ids"
                    ),
                    (provisioner, json.dumps(command), key, f'"{self.schema}".vms', missing),
                )
            cur.execute(
                self._q(
                    "SELECT id, hostname, command FROM {s}.vms WHERE request_key = %s AND provider_ref = '{}'::jsonb "
                    "AND state = 'initializing' ORDER BY id"
                ),
                (key,),
            )
            pending = list(cur.fetchall())
        return [NewVm(r["id"], r["hostname"], self.rotate_client_token(r["id"]), list(r["command"])) for r in pending]

    def set_provider_ref(self, vm_id: int, ref: dict) -> None:
        self._fetch(
            "UPDATE {s}.vms SET provider_ref = %s::jsonb, updated_at = now() WHERE id = %s", (json.dumps(ref), vm_id)
        )

    # -- clients --------------------------------------------------------------------------------

    def get(self, vm_id: int) -> Vm:
        rows = self._fetch("SELECT * FROM {s}.vms WHERE id = %s", (vm_id,))
        if not rows:
            raise VmNotFound(f"VM {vm_id}", "no such VM", "list VMs with `labpipe vms list`")
        return Vm(**rows[0])

    def row(self, vm_id: int) -> dict:
        rows = self._fetch("SELECT * FROM {s}.vms WHERE id = %s", (vm_id,))
        if not rows:
            raise VmNotFound(f"VM {vm_id}", "no such VM")
        return rows[0]

    def _check_live(self, vm_id: int, state: str | None, action: str) -> None:
        if state is None:
            raise VmNotFound(f"VM {vm_id}", "no such VM")
        if state in (VmState.destroying, VmState.destroyed):
            raise VmGone(f"VM {vm_id}", f"is {state}; {action} refused")
        if state == VmState.failed:
            raise StateConflict(f"VM {vm_id}", f"is failed; {action} refused", "an admin reboots or destroys it")

    @staticmethod
    def _gpu_columns(gpu: GpuFacts) -> dict:
        return {
            "gpu_present": gpu.present,
            "gpu_healthy": gpu.healthy,
            "gpu_name": gpu.name,
            "gpu_memory_mb": gpu.memory_total_mb,
            "gpu_detail": gpu.detail[:2000],
        }

    def _gpu_verdict(self, previous_present: bool | None, gpu: GpuFacts) -> str | None:
        """Why the GPU makes this VM unusable, or None (a VM that never had a GPU is honest, not broken)."""
        if gpu.present and not gpu.healthy:
            return f"GPU unhealthy: {gpu.detail}"
        if previous_present and not gpu.present:
            return f"GPU lost: {gpu.detail or 'no longer visible'}"
        return None

    def register(self, vm_id: int, reg: Registration) -> Vm:
        """A client booted: record where it is and its GPU; an initializing VM becomes available."""
        with self.pool.connection() as conn, self._cursor(conn) as cur:
            cur.execute(self._q("SELECT state, gpu_present FROM {s}.vms WHERE id = %s FOR UPDATE"), (vm_id,))
            row = cur.fetchone()
            self._check_live(vm_id, row and row["state"], "registration")
            broken = self._gpu_verdict(row["gpu_present"], reg.gpu)
            if broken:
                state, reason = VmState.failed.value, broken
            elif row["state"] == VmState.initializing:
                state, reason = VmState.available.value, "registered"
            else:
                state, reason = row["state"], None  # a client restarted on a VM that is available or in use
            cur.execute(
                self._q(
                    "UPDATE {s}.vms SET address = %(address)s, connection = %(connection)s::jsonb, "
                    "client_pid = %(pid)s, gpu_present = %(gpu_present)s, gpu_healthy = %(gpu_healthy)s, "
                    "gpu_name = %(gpu_name)s, gpu_memory_mb = %(gpu_memory_mb)s, gpu_detail = %(gpu_detail)s, "
                    "gpu_checked_at = now(), registered_at = now(), last_heartbeat = now(), updated_at = now(), "
                    "state_since = CASE WHEN state = %(state)s THEN state_since ELSE now() END, "
                    "state_reason = coalesce(%(reason)s, state_reason), state = %(state)s "
                    "WHERE id = %(id)s RETURNING *"
                ),
                {
                    "id": vm_id,
                    "address": reg.address,
                    "connection": json.dumps(reg.connection),
                    "pid": reg.pid,
                    "state": state,
                    "reason": reason,
                    **self._gpu_columns(reg.gpu),
                },
            )
            return Vm(**cur.fetchone())

    def heartbeat(self, vm_id: int, beat: Heartbeat) -> Vm:
        """The client is alive: record the time, its GPU and its command; a broken GPU fails the VM."""
        with self.pool.connection() as conn, self._cursor(conn) as cur:
            cur.execute(self._q("SELECT state, gpu_present FROM {s}.vms WHERE id = %s FOR UPDATE"), (vm_id,))
            row = cur.fetchone()
            self._check_live(vm_id, row and row["state"], "heartbeat")
            if row["state"] == VmState.initializing:
                raise StateConflict(f"VM {vm_id}", "is not registered yet", "register first (POST /vms/register)")
            broken = self._gpu_verdict(row["gpu_present"], beat.gpu)
            cur.execute(
                self._q(
                    "UPDATE {s}.vms SET last_heartbeat = now(), updated_at = now(), heartbeat_status = %(status)s, "
                    "command_state = coalesce(%(command_state)s, command_state), gpu_checked_at = now(), "
                    "gpu_present = %(gpu_present)s, gpu_healthy = %(gpu_healthy)s, gpu_name = %(gpu_name)s, "
                    "gpu_memory_mb = %(gpu_memory_mb)s, gpu_detail = %(gpu_detail)s, "
                    "state = CASE WHEN %(broken)s IS NULL THEN state ELSE 'failed' END, "
                    "state_since = CASE WHEN %(broken)s IS NULL THEN state_since ELSE now() END, "
                    "state_reason = coalesce(%(broken)s, state_reason) WHERE id = %(id)s RETURNING *"
                ),
                {"id": vm_id, "status": beat.status, "command_state": beat.command_state, "broken": broken}
                | self._gpu_columns(beat.gpu),
            )
            return Vm(**cur.fetchone())

    # -- users ----------------------------------------------------------------------------------

    def claim(
        self,
        email: str,
        *,
        min_gpu_memory_mb: int = 0,
        require_gpu: bool = False,
        user_command: list[str] | None = None,
        max_per_user: int = 1,
    ) -> Claim:
        """Give ``email`` one available VM that fits, atomically; a user at their limit gets theirs back."""
        fits = (
            "(%(mem)s = 0 OR coalesce(gpu_memory_mb, 0) >= %(mem)s) AND (NOT %(gpu)s OR (gpu_present AND gpu_healthy))"
        )
        args = {"email": email, "mem": min_gpu_memory_mb, "gpu": require_gpu or min_gpu_memory_mb > 0}
        with self.pool.connection() as conn, self._cursor(conn) as cur:
            # one claim at a time per user, so a double click cannot exceed max_per_user
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"labpipe-vms-user-{self.schema}-{email}",))
            cur.execute(self._q("SELECT * FROM {s}.vms WHERE owner = %s AND state = 'in_use' ORDER BY id"), (email,))
            held = cur.fetchall()
            if len(held) >= max_per_user:
                return Claim(Vm(**held[0]), already_held=True)
            cur.execute(
                self._q(
                    "UPDATE {s}.vms AS v SET state = 'in_use', owner = %(email)s, user_command = %(command)s::jsonb, "
                    "command_state = NULL, claimed_at = now(), released_at = NULL, state_since = now(), "
                    "updated_at = now(), state_reason = 'claimed by ' || %(email)s "
                    "FROM (SELECT id FROM {s}.vms WHERE state = 'available' AND " + fits + " "
                    "ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) AS pick WHERE v.id = pick.id RETURNING v.*"
                ),
                args | {"command": json.dumps(user_command) if user_command is not None else None},
            )
            row = cur.fetchone()
            if row is not None:
                return Claim(Vm(**row), already_held=False)
            cur.execute(
                self._q(
                    "SELECT count(*) AS available, count(*) FILTER (WHERE " + fits + ") AS matching "
                    "FROM {s}.vms WHERE state = 'available'"
                ),
                args,
            )
            counts = cur.fetchone()
        if counts["matching"]:  # fitting VMs exist but each was being claimed by someone else this instant
            problem = "every fitting VM was just claimed by other requests"
        elif counts["available"]:
            problem = f"{counts['available']} VMs are free but none fits the requirements"
        else:
            problem = "no VM is free"
        raise NoVmAvailable(
            email, problem, "try again later or ask an admin for more VMs", counts["available"], counts["matching"]
        )

    def release(self, vm_id: int, principal: Principal) -> Vm:
        """Give an in-use VM back to the pool (its owner or an admin)."""
        with self.pool.connection() as conn, self._cursor(conn) as cur:
            cur.execute(self._q("SELECT state, owner FROM {s}.vms WHERE id = %s FOR UPDATE"), (vm_id,))
            row = cur.fetchone()
            if row is None:
                raise VmNotFound(f"VM {vm_id}", "no such VM")
            if principal.role is not Role.admin and row["owner"] != principal.email:
                raise PermissionError(f"VM {vm_id} is not held by {principal.email}")
            if row["state"] != VmState.in_use:
                raise StateConflict(f"VM {vm_id}", f"is {row['state']}, not in use; nothing to release")
            cur.execute(
                self._q(
                    "UPDATE {s}.vms SET state = 'available', owner = NULL, user_command = NULL, command_state = NULL, "
                    "released_at = now(), state_since = now(), updated_at = now(), "
                    "state_reason = 'released by ' || %s WHERE id = %s RETURNING *"
                ),
                (principal.email or principal.role.value, vm_id),
            )
            return Vm(**cur.fetchone())

    # -- admins, flows, reaper ------------------------------------------------------------------

    def list(
        self,
        *,
        states: list[str] | None = None,
        owner: str | None = None,
        ids: list[int] | None = None,
        request_key: str | None = None,
    ) -> list[Vm]:
        sql, args = "SELECT * FROM {s}.vms WHERE true", []
        if states:
            sql += " AND state = ANY(%s)"
            args.append([str(VmState(s)) for s in states])
        if owner is not None:
            sql += " AND owner = %s"
            args.append(owner)
        if ids is not None:
            sql += " AND id = ANY(%s)"
            args.append(list(ids))
        if request_key is not None:
            sql += " AND request_key = %s"
            args.append(request_key)
        return [Vm(**row) for row in self._fetch(sql + " ORDER BY id", tuple(args))]

    def counts(self) -> dict[str, int]:
        rows = self._fetch("SELECT state, count(*) AS n FROM {s}.vms GROUP BY state")
        return {state.value: 0 for state in VmState} | {r["state"]: r["n"] for r in rows}

    def events(self, vm_id: int | None = None, limit: int = 100) -> list[dict]:
        sql = "SELECT * FROM {s}.vm_events" + (" WHERE vm_id = %s" if vm_id is not None else "")
        args = (vm_id, limit) if vm_id is not None else (limit,)
        return list(reversed(self._fetch(sql + " ORDER BY id DESC LIMIT %s", args)))

    def set_state(self, vm_id: int, state: VmState, reason: str, *, from_states: tuple = LIVE_STATES) -> Vm | None:
        """Move one VM to ``state`` if it is in one of ``from_states``; None when it was not."""
        rows = self._fetch(
            "UPDATE {s}.vms SET state = %s, state_reason = %s, state_since = now(), updated_at = now() "
            "WHERE id = %s AND state = ANY(%s) RETURNING *",
            (VmState(state).value, reason, vm_id, [VmState(s).value for s in from_states]),
        )
        return Vm(**rows[0]) if rows else None

    def begin_destroy(self, ids: list[int], reason: str) -> list[dict]:
        """Mark VMs destroying (from any live state) and shut out their clients; returns their rows."""
        rows = self._fetch(
            "UPDATE {s}.vms SET state = 'destroying', state_reason = %s, state_since = now(), updated_at = now() "
            "WHERE id = ANY(%s) AND state <> 'destroyed' RETURNING *",
            (reason, list(ids)),
        )
        rows.sort(key=lambda row: row["id"])  # UPDATE ... RETURNING has no order; reports list VMs by id
        for row in rows:
            self.revoke_client_tokens(row["id"])
        return rows

    def finish_destroy(self, vm_id: int, reason: str = "destroyed") -> Vm | None:
        return self.set_state(vm_id, VmState.destroyed, reason, from_states=(VmState.destroying,))

    def stale(self, limits: VmLimits) -> list[ReapAction]:
        """VMs silent or stuck past the limits, each with what the reaper should do."""
        rows = self._fetch(
            "SELECT *, extract(epoch FROM now() - state_since) AS in_state_s, "
            "extract(epoch FROM now() - coalesce(last_heartbeat, state_since)) AS silent_s FROM {s}.vms "
            "WHERE (state = 'initializing' AND state_since < now() - make_interval(secs => %(stuck)s)) "
            "OR (state IN ('available', 'in_use') AND coalesce(last_heartbeat, state_since) "
            "< now() - make_interval(secs => %(silent)s)) ORDER BY id",
            {"stuck": limits.stuck_after, "silent": limits.silent_after},
        )
        actions = []
        for row in rows:
            in_state, silent = row.pop("in_state_s"), row.pop("silent_s")
            vm = Vm(**row)
            if vm.state == VmState.initializing:
                why = f"initializing for {float(in_state):.0f} s (limit {limits.stuck_after:g} s)"
            else:
                why = f"{vm.state.value} and silent for {float(silent):.0f} s (limit {limits.silent_after:g} s)"
            # an in-use VM is not rebooted under its user: failing it tells them, and the admin, the truth
            rebootable = vm.state != VmState.in_use and vm.reboots < limits.max_reboots
            actions.append(ReapAction(vm, "reboot" if rebootable else "fail", why))
        return actions

    def mark_rebooting(self, action: ReapAction, limits: VmLimits) -> Vm | None:
        """Move a stale VM back to initializing (reboots + 1), unless a heartbeat came in meanwhile."""
        rows = self._fetch(
            "UPDATE {s}.vms SET state = 'initializing', reboots = reboots + 1, owner = NULL, user_command = NULL, "
            "state_since = now(), updated_at = now(), state_reason = %(why)s WHERE id = %(id)s AND state = %(state)s "
            "AND " + self._still_stale_sql(),
            {"why": f"reboot {action.vm.reboots + 1}: {action.why}", "id": action.vm.id, "state": action.vm.state.value}
            | self._limit_args(limits),
        )
        return Vm(**rows[0]) if rows else None

    def mark_failed(self, action: ReapAction, limits: VmLimits) -> Vm | None:
        rows = self._fetch(
            "UPDATE {s}.vms SET state = 'failed', state_since = now(), updated_at = now(), state_reason = %(why)s "
            "WHERE id = %(id)s AND state = %(state)s AND " + self._still_stale_sql(),
            {"why": f"failed: {action.why}", "id": action.vm.id, "state": action.vm.state.value}
            | self._limit_args(limits),
        )
        return Vm(**rows[0]) if rows else None

    @staticmethod
    def _still_stale_sql() -> str:
        return (
            "((state = 'initializing' AND state_since < now() - make_interval(secs => %(stuck)s)) OR "
            "(state IN ('available', 'in_use') AND coalesce(last_heartbeat, state_since) "
            "< now() - make_interval(secs => %(silent)s))) RETURNING *"
        )

    @staticmethod
    def _limit_args(limits: VmLimits) -> dict:
        return {"stuck": limits.stuck_after, "silent": limits.silent_after}
