"""The radio products API and page (the seed's ``contimg-api``): read-only, bearer-token protected.

``create_app(db, config)`` serves, from the lab database (products catalogue, calibration registry,
science tables) and the radio tree:

- ``GET /api/images``, ``/api/mosaics``, ``/api/qa``, ``/api/catalogues``: catalogued products (newest first);
- ``GET /api/sources`` (master list with variability), ``/api/candidates`` (variables, ESE candidates),
  ``/api/sources/{id}/lightcurve`` (JSON) and ``/api/sources/{id}/lightcurve.png`` (a plot);
- ``GET /api/calibration``: the calibration registry (every table, its window, status and QA);
- ``GET /api/stats``: files and bytes per directory of the radio tree, oldest and newest file, growth rate
  (bytes of files modified in the last ``growth_window_days``, per day);
- ``GET /api/products/{product_id}/file``: a catalogued file (QA pictures, FITS), only inside the radio tree.

Only ``/`` (the page shell, no data) and ``/health`` are open; everything else answers 401 without the token.
The token is read from a file that must be mode 0600 (or stricter); the radio tree and the token file are
checked when the app is made (``ApiConfig.validate``), so a wrong path fails at start, naming the setting.

(No ``from __future__ import annotations``: FastAPI must see the dependency aliases as objects.)
"""

import datetime as dt
import hmac
import io
import os
import stat
import time
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from labpipe.db.connect import LabDatabase
from labpipe.errors import ConfigError
from labpipe.radio import calregistry, catalogue, photometry, products, variability
from labpipe.radio.page import PAGE
from pydantic import BaseModel, Field

RADIO_ROOT_ENV = "LABPIPE_RADIO_ROOT"
TOKEN_FILE_ENV = "LABPIPE_RADIO_API_TOKEN_FILE"
bearer = HTTPBearer(auto_error=False)


class ApiConfig(BaseModel):
    """Where the products API reads from, and its token."""

    radio_root: Path = Field(description=f"The radio tree (env {RADIO_ROOT_ENV}, else the layout block's radio).")
    token_file: Path = Field(description=f"File holding the bearer token, mode 0600 (env {TOKEN_FILE_ENV}).")
    growth_window_days: float = Field(7.0, description="Growth rate: bytes modified in this many days, per day.")
    stats_depth: int = Field(2, description="Directory levels of the radio tree reported by /api/stats.")

    @classmethod
    def from_env(
        cls, radio_root: Path | None = None, token_file: Path | None = None, *, defaults=lambda: (None, None), **kw
    ) -> "ApiConfig":
        """Values given (command-line options) first, then the environment (``LABPIPE_RADIO_ROOT``,
        ``LABPIPE_RADIO_API_TOKEN_FILE``), then ``defaults()`` (the layout block's radio tree and the home's token).
        """
        root = radio_root or os.environ.get(RADIO_ROOT_ENV)
        token = token_file or os.environ.get(TOKEN_FILE_ENV)
        if root is None or token is None:
            default_root, default_token = defaults()
            root, token = root or default_root, token or default_token
        if root is None or token is None:
            missing = RADIO_ROOT_ENV if root is None else TOKEN_FILE_ENV
            raise ConfigError(missing, "not set", "set it in the environment or pass it (labpipe radio serve --help)")
        return cls(radio_root=Path(root), token_file=Path(token), **kw)

    def validate_paths(self) -> str:
        """Check the radio tree and the token file; returns the token. Raises ConfigError naming what is wrong."""
        if not self.radio_root.is_dir():
            raise ConfigError(f"{RADIO_ROOT_ENV}={self.radio_root}", "is not a directory", "point it at the radio tree")
        try:
            st = self.token_file.stat()
        except FileNotFoundError as exc:
            raise ConfigError(f"{TOKEN_FILE_ENV}={self.token_file}", "does not exist",
                              "write a token into it (labpipe radio serve --new-token)") from exc  # fmt: skip
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{TOKEN_FILE_ENV}={self.token_file}", "is not a regular file", "use a file")
        if st.st_mode & 0o077:
            raise ConfigError(f"{TOKEN_FILE_ENV}={self.token_file}", f"has mode {oct(st.st_mode & 0o777)}",
                              f"chmod 600 {self.token_file}")  # fmt: skip
        token = self.token_file.read_text().strip()
        if len(token) < 16:
            raise ConfigError(f"{TOKEN_FILE_ENV}={self.token_file}", "holds no token of at least 16 characters",
                              "write a long random token (labpipe radio serve --new-token)")  # fmt: skip
        return token


def write_token(path: Path) -> str:
    """Write a new random token to ``path`` with mode 0600 (created so; never readable by others)."""
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def directory_stats(root: Path, depth: int = 2, growth_window_days: float = 7.0, now: float | None = None) -> list:
    """Per directory of ``root`` down to ``depth`` levels: files, bytes, oldest/newest file, growth (bytes/day).

    Each row counts every file below that directory. Symbolic links are not followed (lstat).
    """
    now = time.time() if now is None else now
    since = now - growth_window_days * 86400
    rows: dict[str, dict] = {}
    root = Path(root)

    def row(rel: str) -> dict:
        return rows.setdefault(rel, {"directory": rel, "files": 0, "bytes": 0, "oldest": None, "newest": None,
                                     "recent_bytes": 0})  # fmt: skip

    row(".")
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        parts = rel.parts
        for i in range(1, min(len(parts), depth) + 1):
            row(str(Path(*parts[:i])))
        dirnames.sort()
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue  # removed while walking
            if not stat.S_ISREG(st.st_mode):
                continue
            keys = ["."] + [str(Path(*parts[:i])) for i in range(1, min(len(parts), depth) + 1)]
            for key in keys:
                r = rows[key]
                r["files"] += 1
                r["bytes"] += st.st_size
                r["oldest"] = st.st_mtime if r["oldest"] is None else min(r["oldest"], st.st_mtime)
                r["newest"] = st.st_mtime if r["newest"] is None else max(r["newest"], st.st_mtime)
                if st.st_mtime >= since:
                    r["recent_bytes"] += st.st_size
    out = []
    for r in sorted(rows.values(), key=lambda r: r["directory"]):
        out.append({
            "directory": r["directory"], "files": r["files"], "bytes": r["bytes"],
            "oldest": _iso(r["oldest"]), "newest": _iso(r["newest"]),
            "growth_bytes_per_day": r["recent_bytes"] / growth_window_days,
        })  # fmt: skip
    return out


def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds") if ts is not None else None


def _error(status: int, error: str, detail: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


class _Refused(Exception):
    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def create_app(db: LabDatabase, config: ApiConfig) -> FastAPI:
    """The products API on ``db`` and ``config.radio_root`` (paths and token validated here)."""
    token = config.validate_paths()
    root = config.radio_root.resolve()
    app = FastAPI(title="labpipe radio products", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(_Refused)
    async def refused(_request, exc: _Refused):
        return _error(exc.status, exc.error, exc.detail)

    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if credentials is None:
            raise _Refused(401, "unauthenticated", "send Authorization: Bearer TOKEN")
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise _Refused(401, "unauthenticated", "unknown token")

    Auth = Annotated[None, Depends(authorised)]

    def listing(kind: str, date: dt.date | None, limit: int, subtype: str | None = None) -> list:
        rows = products.products(db, date=date, kind=kind)
        if subtype:
            rows = [r for r in rows if r["subtype"] == subtype]
        return jsonable_encoder(list(reversed(rows))[:limit])

    Date = Annotated[dt.date | None, Query(description="Observation date YYYY-MM-DD.")]
    Limit = Annotated[int, Query(ge=1, le=5000)]

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/images")
    def images(_: Auth, date: Date = None, limit: Limit = 200) -> list:
        return listing("image", date, limit, "image.pbcor")

    @app.get("/api/mosaics")
    def mosaics(_: Auth, date: Date = None, limit: Limit = 200) -> list:
        return listing("mosaic", date, limit)

    @app.get("/api/qa")
    def qa(_: Auth, date: Date = None, limit: Limit = 200) -> list:
        return listing("qa", date, limit)

    @app.get("/api/catalogues")
    def catalogues(_: Auth, date: Date = None, limit: Limit = 200) -> list:
        return listing("catalogue", date, limit)

    def _variability() -> dict[int, dict]:
        t = catalogue.tables(db)
        fields = ["source_id", "n_epochs", "mean_flux_jy", "v_index", "eta", "eta_threshold", "is_variable",
                  "ese_candidate", "ese_start_mjd", "ese_end_mjd", "ese_depth"]  # fmt: skip
        return {r["source_id"]: r for r in (t.Variability.proj(*fields[1:])).to_dicts()}

    @app.get("/api/sources")
    def sources(_: Auth) -> list:
        assessed = _variability()
        rows = []
        for m in catalogue.master_sources(db):
            v = assessed.get(m["source_id"], {})
            rows.append({**m, **{k: v.get(k) for k in ("n_epochs", "mean_flux_jy", "v_index", "eta",
                                                       "is_variable", "ese_candidate")}})  # fmt: skip
        return jsonable_encoder(products.json_safe(rows))

    @app.get("/api/candidates")
    def candidates(_: Auth) -> dict:
        flagged = variability.flagged(db)
        assessed = _variability()
        return jsonable_encoder(products.json_safe(
            {k: [assessed[s] for s in ids if s in assessed] for k, ids in flagged.items()}
        ))  # fmt: skip

    def _curve(source_id: int) -> photometry.LightCurve:
        curve = photometry.light_curve(db, source_id)
        if not len(curve.mjd):
            raise _Refused(404, "not_found", f"source {source_id} has no light curve")
        return curve

    @app.get("/api/sources/{source_id}/lightcurve")
    def lightcurve(_: Auth, source_id: int) -> dict:
        c = _curve(source_id)
        return jsonable_encoder(products.json_safe({
            "source_id": source_id, "mjd": c.mjd.tolist(), "flux_jy": c.flux_jy.tolist(),
            "flux_err_jy": c.flux_err_jy.tolist(), "detected": c.detected.tolist(), "image_id": c.image_id.tolist(),
        }))  # fmt: skip

    @app.get("/api/sources/{source_id}/lightcurve.png")
    def lightcurve_png(_: Auth, source_id: int) -> Response:
        import matplotlib.pyplot as plt

        c = _curve(source_id)
        assessment = variability.assess(c.mjd, c.flux_jy, c.flux_err_jy)
        fig = photometry.light_curve_figure(c, f"source {source_id}", assessment)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        return Response(buf.getvalue(), media_type="image/png")

    @app.get("/api/calibration")
    def calibration(_: Auth) -> list:
        rows = calregistry.tables(db).CalTable.to_dicts(order_by="solve_mjd DESC")
        return jsonable_encoder(products.json_safe(rows))

    @app.get("/api/stats")
    def stats(_: Auth) -> dict:
        return {"root": str(root), "growth_window_days": config.growth_window_days,
                "directories": directory_stats(root, config.stats_depth, config.growth_window_days)}  # fmt: skip

    @app.get("/api/products/{product_id}/file")
    def product_file(_: Auth, product_id: str) -> Response:
        if len(product_id) != 32 or not all(ch in "0123456789abcdef" for ch in product_id):
            raise _Refused(422, "invalid", f"product id {product_id!r}: expected 32 hex digits")
        found = (calregistry.tables(db).Product & {"product_id": product_id}).to_dicts()
        if not found:
            raise _Refused(404, "not_found", f"no product {product_id}")
        path = Path(found[0]["path"]).resolve()
        if not path.is_relative_to(root):
            raise _Refused(403, "outside_tree", "the product is not inside the radio tree this API serves")
        if not path.is_file():
            raise _Refused(404, "not_a_file", f"{found[0]['path']} is a folder or gone")
        return FileResponse(path)

    return app
