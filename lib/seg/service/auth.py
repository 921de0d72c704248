"""Who may do what: JWT bearer tokens (HS256) and HMAC-signed, expiring download URLs.

One secret, in a file of mode 0600, signs both; two keys are derived from it
(one per purpose), so a signed URL can never pass as a token nor a token as a
URL signature. Replacing the file invalidates every token and every URL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from labpipe.errors import ConfigError, InvalidInput
from labpipe.seg.service.errors import ServiceError

SCOPES = ("read", "submit", "admin")
USER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
ISSUER = "labpipe-seg"


def load_secret(path: Path, *, create: bool = True) -> bytes:
    """The signing secret in ``path``; a new random one (mode 0600) when the file does not exist and ``create``."""
    path = Path(path)
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it meanwhile: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ConfigError(path, "no signing key file", "labpipe seg serve creates one, or give --key-file") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(path, "the signing key is not a regular file", "point --key-file at a file")
    if st.st_mode & 0o077:
        raise ConfigError(path, f"the signing key has mode {oct(st.st_mode & 0o777)}", f"chmod 600 {path}")
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise ConfigError(path, "holds no secret of at least 32 characters", "delete it to have a new one made")
    return secret.encode()


@dataclass(frozen=True)
class Keys:
    """The token key and the URL key, derived from the one secret."""

    token: bytes
    url: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> Keys:
        derive = lambda purpose: hmac.new(secret, purpose, hashlib.sha256).digest()  # noqa: E731
        return cls(derive(b"labpipe-seg token v1"), derive(b"labpipe-seg signed-url v1"))

    @classmethod
    def from_file(cls, path: Path) -> Keys:
        return cls.from_secret(load_secret(path))


@dataclass(frozen=True)
class Principal:
    """The caller a token names: user, scopes, the server folders it may segment in place."""

    user: str
    scopes: frozenset[str]
    paths: tuple[str, ...] = ()
    token_id: str = ""

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def require(self, scope: str) -> None:
        if scope not in self.scopes and not self.admin:
            raise ServiceError(
                403, "forbidden", f"this token lacks the {scope!r} scope", f"ask for a token with --scopes {scope}"
            )

    def may_see(self, owner: str) -> bool:
        return self.admin or owner == self.user


def parse_ttl(text: str) -> int:
    """Seconds in '90s', '30m', '8h', '7d' or a plain number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise InvalidInput(repr(text), "is not a lifetime", "write e.g. 90s, 30m, 8h or 7d")
    return int(float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)])


def mint_token(
    keys: Keys, user: str, scopes: list[str], ttl_s: int, *, paths: list[str] = (), now: float | None = None
) -> str:
    """A signed token for ``user`` with ``scopes`` valid ``ttl_s`` seconds."""
    import jwt

    if not USER_PATTERN.fullmatch(user):
        raise InvalidInput(repr(user), "is not a user name", "letters, digits, '.', '_', '@', '-'; at most 64")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(
            ",".join(scopes) or "''",
            f"unknown scopes {unknown}" if unknown else "no scope",
            f"choose among {', '.join(SCOPES)}",
        )
    for folder in paths:
        if not Path(folder).is_absolute():
            raise InvalidInput(folder, "is not an absolute path", "give server folders as absolute paths")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "sub": user,
        "scopes": sorted(set(scopes)),
        "iat": issued,
        "exp": issued + int(ttl_s),
        "jti": uuid.uuid4().hex,
    }
    if paths:
        claims["paths"] = [str(Path(p).resolve()) for p in paths]
    return jwt.encode(claims, keys.token, algorithm="HS256")


def verify_token(keys: Keys, token: str) -> Principal:
    """The principal of a valid token; 401 otherwise (the token itself is never echoed nor logged)."""
    import jwt

    try:
        claims = jwt.decode(
            token, keys.token, algorithms=["HS256"], issuer=ISSUER, options={"require": ["exp", "iat", "sub", "jti"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise ServiceError(
            401,
            "token_expired",
            "the token has expired",
            "ask for a new token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from exc
    except jwt.PyJWTError as exc:
        raise unauthenticated("the token is not valid here") from exc
    scopes, user = claims.get("scopes"), claims.get("sub")
    if not isinstance(scopes, list) or not isinstance(user, str) or not USER_PATTERN.fullmatch(user):
        raise unauthenticated("the token's claims are malformed")
    paths = claims.get("paths") or []
    return Principal(user, frozenset(s for s in scopes if s in SCOPES), tuple(map(str, paths)), str(claims["jti"]))


def unauthenticated(message: str = "no bearer token") -> ServiceError:
    return ServiceError(
        401,
        "unauthenticated",
        message,
        "send Authorization: Bearer TOKEN (labpipe seg token)",
        headers={"WWW-Authenticate": "Bearer"},
    )


# ------------------------------------------------------------------------------------------ signed URLs


def _signature(keys: Keys, job_id: str, artifact: str, expires: int) -> str:
    return hmac.new(keys.url, f"{job_id}/{artifact}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_path(keys: Keys, job_id: str, artifact: str, ttl_s: int, now: float | None = None) -> tuple[str, int]:
    """``/v1/files/<job>/<artifact>?expires=..&sig=..`` valid ``ttl_s`` seconds, and its expiry (unix s)."""
    expires = int(time.time() if now is None else now) + int(ttl_s)
    sig = _signature(keys, job_id, artifact, expires)
    return f"/v1/files/{job_id}/{artifact}?expires={expires}&sig={sig}", expires


def check_signature(keys: Keys, job_id: str, artifact: str, expires: str, sig: str, now: float | None = None) -> None:
    """403 unless ``sig`` signs exactly this job, artifact and expiry, and the expiry is not past."""
    try:
        when = int(expires)
    except (TypeError, ValueError):
        when = None
    if when is None or not sig or not hmac.compare_digest(_signature(keys, job_id, artifact, when), sig):
        raise ServiceError(
            403,
            "signature_invalid",
            "the link's signature does not match",
            "ask the server for a fresh link (GET /v1/jobs/{id})",
        )
    if when < (time.time() if now is None else now):
        raise ServiceError(403, "link_expired", "the link has expired", "ask the server for a fresh link")
