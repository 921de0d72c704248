"""The lab's certificates (a real mutual-TLS handshake on loopback) and secrets read from 0600 files."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading

import pytest
from labpipe.errors import ConfigError
from labpipe.lab.certs import make_certs
from labpipe.lab.secretenv import resolve_secret_files


def _server_context(folder, host):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(folder / "ca.pem"))
    ctx.load_cert_chain(folder / f"{host}.pem", folder / f"{host}-key.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED  # as Dask's scheduler does: no certificate, no connection
    return ctx


def _handshake(server_ctx, client_ctx, server_name: str) -> str:
    """Connect a client to a one-shot loopback TLS server; returns the peer name the server saw."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, object] = {}

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["peer"] = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = exc
        finally:
            listener.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            assert tls.recv(2) == b"ok"
    finally:
        thread.join(10)
    if "error" in seen:
        raise seen["error"]
    return seen["peer"]


def test_host_certificates_authenticate_both_ways_and_keys_are_private(tmp_path):
    made = make_certs(tmp_path / "lab", {"main": ["127.0.0.1", "main.lab"], "gpu": ["10.0.0.2"]})
    folder = tmp_path / "lab"
    for path in [folder / "ca-key.pem"] + [c.key for c in made.values()]:
        assert oct(path.stat().st_mode & 0o777) == "0o600", path
    client = ssl.create_default_context(cafile=str(folder / "ca.pem"))  # checks the name: 127.0.0.1 is in main's
    client.load_cert_chain(made["gpu"].cert, made["gpu"].key)
    assert _handshake(_server_context(folder, "main"), client, "127.0.0.1") == "gpu"

    stranger = make_certs(tmp_path / "other", {"intruder": ["127.0.0.1"]})["intruder"]
    foreign = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    foreign.load_cert_chain(stranger.cert, stranger.key)  # a certificate, but not from the lab's CA
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(_server_context(folder, "main"), foreign, "127.0.0.1")


def test_the_ca_is_kept_when_a_host_is_added(tmp_path):
    make_certs(tmp_path, {"main": ["10.0.0.1"]})
    ca = (tmp_path / "ca.pem").read_bytes()
    make_certs(tmp_path, {"observatory": ["10.0.0.9"]})
    assert (tmp_path / "ca.pem").read_bytes() == ca
    (tmp_path / "ca-key.pem").unlink()
    with pytest.raises(ConfigError, match="only one of"):
        make_certs(tmp_path, {"x": ["10.0.0.3"]})


def test_secret_files_become_variables_and_readable_ones_are_refused(tmp_path):
    secret = tmp_path / "auth"
    secret.write_text("labpipe:s3cret\n")
    secret.chmod(0o600)
    env = {"PREFECT_API_AUTH_STRING_FILE": str(secret), "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": "/ca.pem"}
    assert resolve_secret_files(env) == ["PREFECT_API_AUTH_STRING"]
    assert env["PREFECT_API_AUTH_STRING"] == "labpipe:s3cret"
    assert "DASK_DISTRIBUTED__COMM__TLS__CA" not in env  # only the listed secrets, not every *_FILE
    assert resolve_secret_files(env) == [] and env["PREFECT_API_AUTH_STRING"] == "labpipe:s3cret"  # once is enough

    env["PREFECT_API_AUTH_STRING_FILE"] = str(secret)
    with pytest.raises(ConfigError, match="is set and so is"):
        resolve_secret_files(env)
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=r"may be read by others \(mode 0644\)") as refused:
        resolve_secret_files({"PREFECT_API_AUTH_STRING_FILE": str(secret)})
    assert refused.value.hint == f"chmod 600 {secret}"


def test_the_wrapper_execs_the_service_with_its_secrets(tmp_path):
    secret = tmp_path / "url"
    secret.write_text("postgresql+asyncpg://prefect:pw@127.0.0.1/prefect\n")
    secret.chmod(0o600)
    env = {**os.environ, "PREFECT_SERVER_DATABASE_CONNECTION_URL_FILE": str(secret)}
    env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
    name = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
    show = f"import os; print(os.environ['{name}'], os.environ.get('{name}_FILE'))"
    wrapped = [sys.executable, "-m", "labpipe.lab.secretenv", sys.executable, "-c", show]
    result = subprocess.run(wrapped, env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["postgresql+asyncpg://prefect:pw@127.0.0.1/prefect", "None"], result.stderr
    secret.chmod(0o640)
    result = subprocess.run(wrapped, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "chmod 600" in result.stderr
