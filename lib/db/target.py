"""How to reach a database server: parsed from a URL, or made by the embedded server."""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from labpipe.errors import ConfigError
from pydantic import BaseModel

_SCHEMES = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+psycopg2": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "mysql+pymysql": "mysql",
}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


class DatabaseTarget(BaseModel):
    """Connection facts for one database server (``host`` may be a socket folder)."""

    backend: Literal["postgresql", "mysql"]
    host: str
    port: int
    user: str
    password: str = ""
    dbname: str | None = None

    @classmethod
    def from_url(cls, url: str) -> DatabaseTarget:
        """Parse ``postgresql://user:pass@host:port/db`` or ``mysql://user:pass@host:port``.

        A socket folder may be given as ``?host=/path`` (as libpq does).
        """
        parts = urlsplit(url)
        backend = _SCHEMES.get(parts.scheme)
        if backend is None:
            raise ConfigError(
                url.split("@")[-1], f"unknown database scheme {parts.scheme!r}", "use postgresql:// or mysql://"
            )
        query = parse_qs(parts.query)
        host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
        user = unquote(parts.username or ("postgres" if backend == "postgresql" else "root"))
        return cls(
            backend=backend,
            host=host,
            port=parts.port or _DEFAULT_PORTS[backend],
            user=user,
            password=unquote(parts.password or ""),
            dbname=parts.path.lstrip("/") or None,
        )

    @property
    def url(self) -> str:
        """The URL with the password left out, for logs and messages."""
        user, db = quote(self.user), self.dbname or ""
        if self.host.startswith("/"):
            return f"{self.backend}://{user}@/{db}?host={self.host}"
        return f"{self.backend}://{user}@{self.host}:{self.port}/{db}"

    def with_dbname(self, dbname: str | None) -> DatabaseTarget:
        return self.model_copy(update={"dbname": dbname})

    def psycopg2_kwargs(self) -> dict:
        return dict(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.dbname or "postgres",
            sslmode="disable" if self.host.startswith("/") or self.host in ("127.0.0.1", "localhost") else "prefer",
        )

    def pymysql_kwargs(self) -> dict:
        kwargs = dict(user=self.user, password=self.password, port=self.port)
        if self.host.startswith("/"):
            kwargs["unix_socket"] = self.host
        else:
            kwargs["host"] = self.host
        return kwargs

    def reachable(self, timeout: float = 2.0) -> bool:
        """Whether a connection can be opened now (used to skip absent servers)."""
        try:
            if self.backend == "postgresql":
                import psycopg2

                psycopg2.connect(connect_timeout=int(max(1, timeout)), **self.psycopg2_kwargs()).close()
            else:
                import pymysql

                pymysql.connect(connect_timeout=timeout, **self.pymysql_kwargs()).close()
        except Exception:
            return False
        return True
