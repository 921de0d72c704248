"""`labpipe seg token` and `labpipe seg serve` as users run them: real processes, a real server on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from labpipe.seg.service.auth import Keys, verify_token
from labpipe.vms.server import free_port


def _env(home) -> dict:
    return {
        **os.environ,
        "LABPIPE_HOME": str(home),
        "LABPIPE_OFFLINE": "1",
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
        "COLUMNS": "300",
    }


def _labpipe(home, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labpipe.cli", "seg", *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_token_is_signed_with_a_0600_key_made_on_first_use(tmp_path):
    key = tmp_path / "keys" / "service.key"
    made = _labpipe(
        tmp_path,
        "token",
        "--user",
        "alice",
        "--scopes",
        "read,submit",
        "--ttl",
        "2h",
        "--path",
        "/data/tomo",
        "--key-file",
        str(key),
    )
    assert made.returncode == 0, made.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    principal = verify_token(Keys.from_file(key), made.stdout.strip())
    assert (principal.user, sorted(principal.scopes), principal.paths) == ("alice", ["read", "submit"], ("/data/tomo",))


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--scopes", "read,root"], "unknown scopes"), (["--ttl", "soon"], "lifetime"), (["--user", "a/b"], "user")],
)
def test_token_refuses_bad_input_naming_it(tmp_path, args, says):
    options = {"--user": "alice", "--scopes": "read", "--ttl": "1h"} | dict(zip(args[::2], args[1::2], strict=True))
    answer = _labpipe(tmp_path, "token", *[x for kv in options.items() for x in kv], "--key-file", str(tmp_path / "k"))
    assert answer.returncode == 2 and says in answer.stderr, answer.stderr


def test_a_key_others_can_read_is_refused(tmp_path):
    key = tmp_path / "service.key"
    key.write_text("x" * 64)
    key.chmod(0o644)
    answer = _labpipe(tmp_path, "token", "--user", "alice", "--key-file", str(key))
    assert answer.returncode == 2 and "chmod 600" in answer.stderr and not answer.stdout


def test_serve_refuses_plain_http_beyond_loopback(tmp_path):
    answer = _labpipe(tmp_path, "serve", "--host", "0.0.0.0", "--data", str(tmp_path / "d"))
    assert answer.returncode == 2 and "plain HTTP" in answer.stderr and "--certfile" in answer.stderr


def test_serve_answers_on_loopback_with_tokens_from_the_same_key(tmp_path):
    port, key = free_port(), tmp_path / "service.key"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "labpipe.cli",
            "seg",
            "serve",
            "--port",
            str(port),
            "--data",
            str(tmp_path / "data"),
            "--key-file",
            str(key),
        ],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "labpipe seg serve did not answer within 120 s"
                time.sleep(0.2)
        token = _labpipe(tmp_path, "token", "--user", "alice", "--key-file", str(key)).stdout.strip()
        info = httpx.get(f"http://127.0.0.1:{port}/v1/server/info", headers={"Authorization": f"Bearer {token}"})
        assert info.status_code == 200 and info.json()["user"] == "alice", info.text
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs").status_code == 401
    finally:
        server.terminate()
        server.wait(30)
    assert (tmp_path / "data" / "uploads").is_dir()


def test_serve_over_tls_to_a_client_that_trusts_the_lab_ca_and_refuses_one_that_does_not(tmp_path):
    """`labpipe seg serve --certfile/--keyfile` with a certificate of a CA made here; the client verifies with it."""
    from labpipe.lab.certs import host_cert
    from labpipe.seg.client import SegmentationClient, ServiceError
    from labpipe.seg.simulate import simulate_tomogram, write_simulated

    cert = host_cert(tmp_path / "certs", "seg", ["127.0.0.1", "localhost"])
    ca = tmp_path / "certs" / "ca.pem"
    port, key = free_port(), tmp_path / "service.key"
    args = ["--port", str(port), "--data", str(tmp_path / "data"), "--key-file", str(key)]
    server = subprocess.Popen(
        [sys.executable, "-m", "labpipe.cli", "seg", "serve", *args, "--certfile", str(cert.cert), "--keyfile",
         str(cert.key)],
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{url}/v1/healthz", timeout=2, verify=str(ca)).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "labpipe seg serve did not answer over TLS within 120 s"
                time.sleep(0.2)
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/v1/healthz", timeout=5)
        token = _labpipe(tmp_path, "token", "--user", "alice", "--key-file", str(key)).stdout.strip()
        tomogram, _ = write_simulated(tmp_path / "TS_01.mrc", simulate_tomogram((16, 24, 24), seed=2))
        with SegmentationClient(url, token, verify=str(ca)) as client:
            assert client.server_info()["user"] == "alice"
            uploaded = client.upload(tomogram, part_bytes=8 << 20)
        assert uploaded.metadata["shape_zyx"] == [16, 24, 24]
        with SegmentationClient(url, token) as stranger, pytest.raises(ServiceError) as refused:
            stranger.server_info()  # the system's CAs do not know the lab's
        assert refused.value.code == "tls_untrusted" and not refused.value.retryable
        assert "not trusted" in refused.value.problem and "--cacert" in refused.value.hint
    finally:
        server.terminate()
        server.wait(30)
