"""Loopback stand-ins for PyRAT and RSpace, two cloud services that cannot run here.

Each is a FastAPI app implementing only the documented endpoints labpipe calls, served by
uvicorn in a thread of the test process on a port the OS picks; the real clients (httpx
for PyRAT, ``rspace-client`` for RSpace) talk real HTTP to it.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request, Response

CLIENT_TOKEN, USER_TOKEN, API_KEY = "client-abc", "user-xyz", "rspace-key"


def pyrat_app(animals: list[dict], *, fail: dict | None = None) -> FastAPI:
    """``GET /api/v3/version`` and ``/api/v3/animals`` (k, s, l, o, state; x-total-count); basic auth."""
    app = FastAPI()
    fail = fail if fail is not None else {}

    def check(authorization: str | None) -> None:
        expected = "Basic " + base64.b64encode(f"{CLIENT_TOKEN}:{USER_TOKEN}".encode()).decode()
        if authorization != expected:
            raise HTTPException(401, "invalid tokens")
        if fail.get("status"):
            raise HTTPException(fail["status"], "PyRAT is down for maintenance")

    @app.get("/pyrat/api/v3/version")
    def version(authorization: str | None = Header(None)):
        check(authorization)
        return "3.0"

    @app.get("/pyrat/api/v3/animals")
    def list_animals(request: Request, response: Response, authorization: str | None = Header(None)):
        check(authorization)
        query = request.query_params
        keys = query.getlist("k")
        states = set(query.getlist("state")) or {"live"}
        chosen = sorted((a for a in animals if a["state"] in states), key=lambda a: a["eartag_or_id"])
        offset, limit = int(query.get("o", 0)), int(query.get("l", 100))
        response.headers["x-total-count"] = str(len(chosen))
        page = chosen[offset : offset + limit]
        response.headers["x-count"] = str(len(page))
        return [{k: a.get(k) for k in keys} if keys else a for a in page]

    return app


def rspace_app(documents: dict[int, dict]) -> FastAPI:
    """``GET /api/v1/status``, ``GET`` and ``PUT /api/v1/documents/{id}`` with the apiKey header."""
    app = FastAPI()

    def check(api_key: str | None) -> None:
        if api_key != API_KEY:
            raise HTTPException(401, "invalid API key")

    @app.get("/api/v1/status")
    def status(apiKey: str | None = Header(None)):  # noqa: N803 - RSpace's header name
        check(apiKey)
        return {"message": "OK", "rspaceVersion": "2.0"}

    @app.get("/api/v1/documents/{document_id}")
    def get_document(document_id: int, apiKey: str | None = Header(None)):  # noqa: N803
        check(apiKey)
        if document_id not in documents:
            raise HTTPException(404, "no such document")
        return documents[document_id]

    @app.put("/api/v1/documents/{document_id}")
    async def put_document(document_id: int, request: Request, apiKey: str | None = Header(None)):  # noqa: N803
        check(apiKey)
        body = await request.json()
        doc = documents[document_id]
        for update in body.get("fields", []):
            for existing in doc["fields"]:
                if existing["id"] == update["id"]:
                    existing["content"] = update["content"]
        return doc

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` on 127.0.0.1 in a thread; yields its base URL; stops it after."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
