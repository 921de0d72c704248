"""The service's uploads, tokens, limits and signed links, against the real server on loopback (no jobs run)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from labpipe.seg import checksums
from labpipe.seg.service.auth import Keys, mint_token, signed_path
from labpipe.seg.service.uploads import Prefix

from tests.lib.seg.service.conftest import PART, init, put_part, sha, upload

ENVELOPE = {"code", "message", "hint", "retryable"}


def _nothing_left(svc) -> None:
    data = svc.settings.data
    assert not any((data / "uploads").iterdir()), list((data / "uploads").iterdir())
    assert not any((data / "files").iterdir()), list((data / "files").iterdir())


def test_health_needs_no_token_and_info_lists_limits(start_service):
    svc = start_service()
    with svc.client() as anonymous:
        assert anonymous.get("/v1/healthz").json()["status"] == "ok"
        refused = anonymous.get("/v1/server/info")
        assert refused.status_code == 401 and set(refused.json()) >= ENVELOPE
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    with svc.client(svc.token()) as client:
        info = client.get("/v1/server/info").json()
    assert info["user"] == "alice" and info["limits"]["part_size_min"] == PART
    assert [m["name"] for m in info["models"]] == ["tiny-test"] and info["limits"]["rate_limit_per_minute"] == 60


def test_upload_in_any_order_is_assembled_checked_and_validated(start_service, tomogram_bytes):
    svc = start_service()
    with svc.client(svc.token()) as client:
        started = init(client, tomogram_bytes)
        assert started.status_code == 201
        view = started.json()
        assert view["parts_total"] == 6 and view["parts_received"] == [] and view["state"] == "uploading"
        for index in reversed(range(view["parts_total"])):  # out of order is allowed (parallel clients)
            sent = put_part(client, view["upload_id"], tomogram_bytes, index)
            assert sent.status_code == 200, sent.text
        assert sent.json()["parts_received_count"] == 6
        done = client.post(f"/v1/uploads/{view['upload_id']}/complete")
        assert done.status_code == 200, done.text
        record = done.json()
        again = client.post(f"/v1/uploads/{view['upload_id']}/complete").json()
    assert record["state"] == "complete" and record["metadata"]["shape_zyx"] == [48, 40, 48]
    assert "path" not in record["metadata"] and again["file_id"] == record["file_id"]
    stored = svc.settings.data / "files" / f"{record['file_id']}.mrc"
    assert stored.read_bytes() == tomogram_bytes
    assert not any((svc.settings.data / "uploads").iterdir())


def test_init_again_resumes_with_the_parts_held_and_a_finished_file_is_not_sent_again(start_service, tomogram_bytes):
    svc = start_service()
    with svc.client(svc.token()) as client:
        first = init(client, tomogram_bytes).json()
        for index in (0, 2, 3):
            put_part(client, first["upload_id"], tomogram_bytes, index)
        resumed = init(client, tomogram_bytes)
        assert resumed.status_code == 200
        assert resumed.json()["upload_id"] == first["upload_id"] and resumed.json()["parts_received"] == [0, 2, 3]
        record = upload(client, tomogram_bytes)  # sends 1, 4 and 5 only
        assert record["upload_id"] == first["upload_id"]
        known = init(client, tomogram_bytes).json()
    assert known["state"] == "complete" and known["file_id"] == record["file_id"]


def test_server_restarted_mid_upload_keeps_the_parts(start_service, tomogram_bytes):
    svc = start_service()
    token = svc.token()
    with svc.client(token) as client:
        view = init(client, tomogram_bytes).json()
        for index in range(3):
            put_part(client, view["upload_id"], tomogram_bytes, index)
    svc.restart()
    with svc.client(token) as client:
        status = client.get(f"/v1/uploads/{view['upload_id']}").json()
        assert status["parts_received"] == [0, 1, 2]
        record = upload(client, tomogram_bytes)
    assert record["file_id"] == view["upload_id"]
    assert (svc.settings.data / "files" / f"{record['file_id']}.mrc").read_bytes() == tomogram_bytes


def test_a_corrupt_mrc_is_refused_at_complete_and_nothing_is_left(start_service, tomogram_bytes):
    svc = start_service()
    corrupt = bytearray(tomogram_bytes)
    corrupt[12:16] = (3).to_bytes(4, "little")  # mode 3: complex, a Fourier transform, not a tomogram
    corrupt = bytes(corrupt)
    with svc.client(svc.token()) as client:
        view = init(client, corrupt).json()
        for index in range(view["parts_total"]):
            put_part(client, view["upload_id"], corrupt, index)
        refused = client.post(f"/v1/uploads/{view['upload_id']}/complete")
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert body["code"] == "invalid_mrc" and body["message"].startswith("TS_01.mrc: ") and "mode" in body["message"]
        assert str(svc.settings.data) not in refused.text  # server paths stay on the server
        assert client.get(f"/v1/uploads/{view['upload_id']}").status_code == 404
    _nothing_left(svc)


def test_a_whole_file_checksum_mismatch_is_refused_and_nothing_is_left(start_service, tomogram_bytes):
    svc = start_service()
    with svc.client(svc.token()) as client:
        body = {"filename": "x.mrc", "size": len(tomogram_bytes), "sha256": "0" * 64, "part_size": PART}
        view = client.post("/v1/uploads/init", json=body).json()
        for index in range(view["parts_total"]):
            put_part(client, view["upload_id"], tomogram_bytes, index)
        refused = client.post(f"/v1/uploads/{view['upload_id']}/complete")
    assert refused.status_code == 422 and refused.json()["code"] == "checksum_mismatch"
    _nothing_left(svc)


def test_bad_parts_are_refused_each_with_its_code(start_service, tomogram_bytes):
    svc = start_service()
    with svc.client(svc.token()) as client:
        view = init(client, tomogram_bytes).json()
        url = f"/v1/uploads/{view['upload_id']}/part"
        part = tomogram_bytes[:PART]
        wrong = client.put(f"{url}/0", content=part, headers={"X-Part-SHA256": sha(b"other")})
        assert wrong.status_code == 400 and wrong.json()["code"] == "part_checksum_mismatch"
        assert wrong.json()["retryable"] is True
        missing_header = client.put(f"{url}/0", content=part)
        assert missing_header.status_code == 400 and missing_header.json()["code"] == "invalid_request"
        beyond = client.put(f"{url}/6", content=part, headers={"X-Part-SHA256": sha(part)})
        assert beyond.status_code == 400 and beyond.json()["code"] == "part_out_of_range"
        negative = client.put(f"{url}/-1", content=part, headers={"X-Part-SHA256": sha(part)})
        assert negative.status_code == 400 and negative.json()["code"] == "part_out_of_range"
        big = part + b"x"
        oversized = client.put(f"{url}/0", content=big, headers={"X-Part-SHA256": sha(big)})
        assert oversized.status_code == 413 and oversized.json()["code"] == "part_too_large"
        short = part[:-1]
        shorter = client.put(f"{url}/0", content=short, headers={"X-Part-SHA256": sha(short)})
        assert shorter.status_code == 400 and shorter.json()["code"] == "part_size_mismatch"
        assert client.get(f"/v1/uploads/{view['upload_id']}").json()["parts_received"] == []
        early = client.post(f"/v1/uploads/{view['upload_id']}/complete")
        assert early.status_code == 409 and early.json()["code"] == "upload_incomplete"
        assert early.json()["missing"] == [0, 1, 2, 3, 4, 5] and early.json()["retryable"] is True
        for field, value in [("part_size", 1000), ("sha256", "abc"), ("size", -1)]:
            body = {"filename": "a.mrc", "size": 10, "sha256": "0" * 64, "part_size": PART, field: value}
            bad = client.post("/v1/uploads/init", json=body)
            assert bad.status_code == 400 and bad.json()["code"] == "invalid_request" and field in bad.json()["message"]
        too_big = {
            "filename": "a.mrc",
            "size": svc.settings.max_upload_bytes + 1,
            "sha256": "0" * 64,
            "part_size": PART,
        }
        assert client.post("/v1/uploads/init", json=too_big).json()["code"] == "upload_too_large"
        assert client.post("/v1/uploads/init", content=b"[1, 2]").json()["code"] == "invalid_request"


def test_part_checksums_crc32c_or_sha256_each_checked(start_service, tomogram_bytes):
    svc = start_service()
    with svc.client(svc.token()) as client:
        view = init(client, tomogram_bytes).json()
        url = f"/v1/uploads/{view['upload_id']}/part"
        part = tomogram_bytes[PART : 2 * PART]
        crc, digest = checksums.part_digest("crc32c", part), sha(part)
        assert put_part(client, view["upload_id"], tomogram_bytes, 0, checksum="sha256").status_code == 200
        wrong_crc = client.put(f"{url}/1", content=part, headers={"X-Part-CRC32C": f"{int(crc, 16) ^ 1:08x}"})
        assert wrong_crc.status_code == 400 and wrong_crc.json()["code"] == "part_checksum_mismatch"
        assert "X-Part-CRC32C" in wrong_crc.json()["message"] and wrong_crc.json()["retryable"] is True
        both_one_wrong = client.put(
            f"{url}/1", content=part, headers={"X-Part-CRC32C": crc, "X-Part-SHA256": sha(b"other")}
        )
        assert both_one_wrong.status_code == 400 and "X-Part-SHA256" in both_one_wrong.json()["message"]
        malformed = client.put(f"{url}/1", content=part, headers={"X-Part-CRC32C": "12345"})
        assert malformed.status_code == 400 and malformed.json()["code"] == "invalid_request"
        assert "X-Part-CRC32C" in malformed.json()["message"] and "8 hex digits" in malformed.json()["message"]
        missing = client.put(f"{url}/1", content=part)
        assert missing.status_code == 400 and "X-Part-CRC32C or X-Part-SHA256" in missing.json()["message"]
        assert client.get(f"/v1/uploads/{view['upload_id']}").json()["parts_received"] == [0]
        both = client.put(f"{url}/1", content=part, headers={"X-Part-CRC32C": crc.upper(), "X-Part-SHA256": digest})
        assert both.status_code == 200, both.text
        record = upload(client, tomogram_bytes)  # the rest with CRC32C, as the client sends them
    assert (svc.settings.data / "files" / f"{record['file_id']}.mrc").read_bytes() == tomogram_bytes


def test_parts_damaged_on_the_server_disk_are_asked_for_again(start_service, tomogram_bytes):
    svc = start_service()
    token = svc.token()
    with svc.client(token) as client:
        view = init(client, tomogram_bytes).json()
        for index in range(view["parts_total"]):
            put_part(client, view["upload_id"], tomogram_bytes, index, checksum="sha256" if index == 0 else "crc32c")
    svc.restart()  # the running check is in memory: complete reads the file again
    assembling = svc.settings.data / "uploads" / view["upload_id"] / "data.partial"
    with open(assembling, "r+b") as handle:
        for index in (0, 2):  # one part held with its SHA-256, one with its CRC32C
            handle.seek(index * PART + 5000)
            byte = handle.read(1)
            handle.seek(index * PART + 5000)
            handle.write(bytes([byte[0] ^ 0xFF]))
    with svc.client(token) as client:
        damaged = client.post(f"/v1/uploads/{view['upload_id']}/complete")
        assert damaged.status_code == 409 and damaged.json()["code"] == "upload_incomplete"
        assert damaged.json()["missing"] == [0, 2] and damaged.json()["retryable"] is True
        record = upload(client, tomogram_bytes)  # init resumes: parts 0 and 2 only
    assert (svc.settings.data / "files" / f"{record['file_id']}.mrc").read_bytes() == tomogram_bytes


def test_a_running_check_behind_the_parts_is_queued_once_and_ends_quietly_after_complete(
    start_service, tomogram_bytes, caplog
):
    """Parts faster than the running check (a fast link): one check waits, not one per part; complete reads the
    rest itself, and the check that starts after it finds nothing to do (no warning, no state left)."""
    svc = start_service()
    store = svc.service.uploads
    checker, release, submitted = store._checker, threading.Event(), []
    checker.submit(release.wait), checker.submit(release.wait)  # both check threads busy: checks wait in line
    real_submit = checker.submit

    def counting_submit(fn, *args):
        submitted.append(args)
        return real_submit(fn, *args)

    store._checker = SimpleNamespace(submit=counting_submit)
    try:
        with caplog.at_level("INFO", logger="labpipe.seg.service"), svc.client(svc.token()) as client:
            view = init(client, tomogram_bytes).json()
            for index in range(view["parts_total"]):  # all six finished while the check waits
                assert put_part(client, view["upload_id"], tomogram_bytes, index).status_code == 200
            assert len(submitted) == 1, submitted
            folder = svc.settings.data / "uploads" / view["upload_id"]
            meta = (folder / "upload.json").read_text()
            record = client.post(f"/v1/uploads/{view['upload_id']}/complete").json()
            release.set()
            real_submit(lambda: None).result(10)  # the waiting check has run by now (a FIFO of two threads)
            time.sleep(0.2)
            # a check that began just before complete renamed the file (its folder not removed yet) finds no
            # data.partial: it ends quietly too
            folder.mkdir()
            (folder / "upload.json").write_text(meta)
            store._prefixes[view["upload_id"]] = Prefix(folder / "data.partial", streaming=True)
            store._advance_quietly(view["upload_id"])
    finally:
        release.set()
        store._checker = checker
    assert record["state"] == "complete"
    assert not [r for r in caplog.records if "running check stopped" in r.getMessage()]
    store._prefixes.pop(view["upload_id"])
    assert store._prefixes == {} and store._checks_queued == set()


def test_a_file_name_never_becomes_a_path(start_service, tomogram_bytes, tmp_path):
    svc = start_service()
    with svc.client(svc.token()) as client:
        record = upload(client, tomogram_bytes, filename="../../../escape.mrc")
    assert record["filename"] == "escape.mrc"
    assert not list(tmp_path.rglob("escape.mrc"))
    assert sorted(p.name for p in (svc.settings.data / "files").iterdir()) == sorted(
        [f"{record['file_id']}.mrc", f"{record['file_id']}.json"]
    )


def test_tokens_wrong_expired_or_out_of_scope_are_refused(start_service, tomogram_bytes, tmp_path):
    svc = start_service()
    foreign = mint_token(Keys.from_secret(b"x" * 64), "alice", ["read", "submit"], 3600)
    cases = [
        ("Bearer " + foreign, 401, "unauthenticated"),
        ("Bearer not.a.token", 401, "unauthenticated"),
        ("Basic " + svc.token(), 401, "unauthenticated"),
        (
            "Bearer "
            + mint_token(Keys.from_file(svc.settings.key_file), "alice", ["read"], 3600, now=time.time() - 7200),
            401,
            "token_expired",
        ),
    ]
    for header, status, code in cases:
        with svc.client() as client:
            answer = client.get("/v1/server/info", headers={"Authorization": header})
        assert (answer.status_code, answer.json()["code"]) == (status, code), header[:12]
    reader = svc.token(scopes=["read"])
    with svc.client(reader) as client:
        assert client.get("/v1/server/info").status_code == 200
        refused = init(client, tomogram_bytes)
        assert (
            refused.status_code == 403
            and refused.json()["code"] == "forbidden"
            and "submit" in refused.json()["message"]
        )
        assert client.post("/v1/jobs", json={"file_id": "0" * 32}).status_code == 403
    assert not any((svc.settings.data / "uploads").iterdir())


def test_two_users_see_only_their_own(start_service, tomogram_bytes):
    svc = start_service()
    with svc.client(svc.token("alice")) as alice, svc.client(svc.token("bob")) as bob:
        record = upload(alice, tomogram_bytes)
        pending = init(alice, tomogram_bytes[: 2 * PART]).json()
        assert bob.get(f"/v1/uploads/{record['upload_id']}").status_code == 404
        assert bob.get(f"/v1/uploads/{pending['upload_id']}").status_code == 404
        assert put_part(bob, pending["upload_id"], tomogram_bytes, 0).status_code == 404
        assert bob.post(f"/v1/uploads/{pending['upload_id']}/complete").status_code == 404
        assert bob.delete(f"/v1/uploads/{pending['upload_id']}").status_code == 404
        job = bob.post("/v1/jobs", json={"file_id": record["file_id"], "model": "tiny-test"})
        assert job.status_code == 404 and job.json()["code"] == "not_found"
        fresh = init(bob, tomogram_bytes)  # the same bytes are a new upload for bob
        assert fresh.status_code == 201 and fresh.json()["upload_id"] != record["upload_id"]
        assert bob.get("/v1/jobs").json() == {"jobs": []}
        server_path = bob.post("/v1/jobs", json={"server_path": str(svc.settings.data / "files" / "x.mrc")})
        assert server_path.status_code == 403 and server_path.json()["code"] == "forbidden"
    with svc.client(svc.token("root", ["admin"])) as admin:
        assert admin.get(f"/v1/uploads/{record['upload_id']}").status_code == 200


def test_rate_limit_per_token_answers_429_with_retry_after(start_service):
    svc = start_service(rate_limit_per_minute=5)
    with svc.client(svc.token()) as busy, svc.client(svc.token()) as other:
        answers = [busy.get("/v1/server/info") for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 5 + [429]
        limited = answers[-1]
        assert limited.json()["code"] == "rate_limited" and limited.json()["retryable"] is True
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert other.get("/v1/server/info").status_code == 200  # per token


def test_signed_links_tampered_or_expired_are_refused(start_service):
    svc = start_service()
    keys, job = Keys.from_file(svc.settings.key_file), "a" * 32
    good, _ = signed_path(keys, job, "mask.mrc", 60)
    expired, _ = signed_path(keys, job, "mask.mrc", 60, now=time.time() - 3600)
    with svc.client() as client:
        assert client.get(good).status_code == 404  # a valid link to a job that does not exist
        tampered = [
            good.replace("mask.mrc", "stats.json", 1),
            good.replace("a" * 32, "b" * 32, 1),
            good[:-1] + ("0" if good[-1] != "0" else "1"),
            good.split("&sig=")[0],
            good.replace("expires=", "expires=9"),
        ]
        for link in tampered:
            answer = client.get(link)
            assert (answer.status_code, answer.json()["code"]) == (403, "signature_invalid"), link
        late = client.get(expired)
        assert late.status_code == 403 and late.json()["code"] == "link_expired"


def test_stale_uploads_are_removed_and_abandoned_ones_at_once(start_service, tomogram_bytes):
    svc = start_service(upload_max_age_s=60)
    with svc.client(svc.token()) as client:
        old = init(client, tomogram_bytes).json()
        put_part(client, old["upload_id"], tomogram_bytes, 0)
        dropped = init(client, tomogram_bytes[:PART], filename="b.mrc").json()
        assert client.delete(f"/v1/uploads/{dropped['upload_id']}").status_code == 204
        assert client.get(f"/v1/uploads/{dropped['upload_id']}").status_code == 404
        assert svc.service.uploads.clean_stale() == []  # young: kept
        assert svc.service.uploads.clean_stale(now=time.time() + 61) == [old["upload_id"]]
        assert client.get(f"/v1/uploads/{old['upload_id']}").status_code == 404
    _nothing_left(svc)


def test_unknown_routes_and_ids_answer_the_envelope(start_service):
    svc = start_service()
    with svc.client(svc.token()) as client:
        for path in ("/v1/nothing", "/v1/jobs/not-an-id", "/v1/uploads/../../etc/passwd", f"/v1/jobs/{'f' * 32}"):
            answer = client.get(path)
            assert answer.status_code == 404 and set(answer.json()) >= ENVELOPE, path


@pytest.mark.parametrize("scopes", [["read", "root"], []])
def test_tokens_are_minted_only_with_known_scopes(start_service, scopes):
    from labpipe.errors import InvalidInput

    svc = start_service()
    with pytest.raises(InvalidInput):
        svc.token(scopes=scopes)


def test_logs_carry_neither_tokens_nor_signatures_nor_data(start_service, tomogram_bytes, caplog):
    import logging

    svc = start_service()
    token = svc.token()
    caplog.set_level(logging.DEBUG)
    keys = Keys.from_file(svc.settings.key_file)
    link, _ = signed_path(keys, "c" * 32, "mask.mrc", 60)
    with svc.client(token) as client:
        record = upload(client, tomogram_bytes)
        client.get("/v1/server/info", headers={"Authorization": f"Bearer {token}x"})  # refused
        client.get(link)
        client.get(link + "0")
    server_side = ("labpipe", "uvicorn", "fastapi", "starlette")  # not the test's own httpx client
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] in server_side)
    assert record["upload_id"] in logged  # the service does log what happens
    for secret in (token, token.split(".")[2], link.split("sig=")[1], tomogram_bytes[2000:2032].hex()):
        assert secret not in logged


def _taken_in(svc, upload_id: str, index: int, length: int) -> None:
    """Wait until the server's writer of the part has taken ``length`` bytes of its body (then the test cuts)."""
    deadline = time.monotonic() + 30
    while (writer := svc.service.uploads._writing.get((upload_id, index))) is None or writer.announced < length:
        assert time.monotonic() < deadline, "the server did not take the part's bytes in"
        time.sleep(0.01)


def test_a_part_cut_mid_body_keeps_what_arrived_and_is_resumed_from_there(start_service, tomogram_bytes, caplog):
    """A dropped connection is ordinary for a resumable upload: no traceback in the server log, the part not held,
    but the bytes that arrived are kept (``partial``) and the client sends only the rest (``X-Part-Offset``)."""
    import logging
    import socket
    from urllib.parse import urlsplit

    svc = start_service()
    token = svc.token()
    caplog.set_level(logging.INFO)
    with svc.client(token) as client:
        upload_id = init(client, tomogram_bytes).json()["upload_id"]
        part = tomogram_bytes[PART : 2 * PART]
        half = len(part) // 2 + 3  # not on a voxel boundary
        address = urlsplit(svc.url)
        with socket.create_connection((address.hostname, address.port)) as raw:
            head = (f"PUT /v1/uploads/{upload_id}/part/1 HTTP/1.1\r\nHost: {address.netloc}\r\n"
                    f"Authorization: Bearer {token}\r\nX-Part-SHA256: {sha(part)}\r\n"
                    f"Content-Length: {len(part)}\r\n\r\n")  # fmt: skip
            raw.sendall(head.encode() + part[:half])
            _taken_in(svc, upload_id, 1, half)  # (uvicorn drops a body it has not handed over yet at a cut)
        status = client.get(f"/v1/uploads/{upload_id}", params={"part": 1}).json()  # answers once the cut is seen
        assert status["parts_received"] == [] and status["partial"] == {"1": half}
        assert "went away mid-part" in caplog.text
        url, digest = f"/v1/uploads/{upload_id}/part/1", {"X-Part-SHA256": sha(part)}
        ahead = client.put(url, content=part[half + 1 :], headers={**digest, "X-Part-Offset": str(half + 1)})
        assert ahead.status_code == 409 and ahead.json()["code"] == "part_offset_mismatch"
        assert ahead.json()["partial_bytes"] == half
        bad = client.put(url, content=part[half:], headers={**digest, "X-Part-Offset": "x"})
        assert bad.status_code == 400 and "X-Part-Offset" in bad.json()["message"]
        rest = client.put(url, content=part[half:], headers={**digest, "X-Part-Offset": str(half)})
        assert rest.status_code == 200, rest.text
        assert rest.json()["bytes"] == len(part) - half  # the server received only the rest
        after = client.get(f"/v1/uploads/{upload_id}").json()
        assert after["parts_received"] == [1] and after["partial"] == {}
        record = upload(client, tomogram_bytes)
    assert (svc.settings.data / "files" / f"{record['file_id']}.mrc").read_bytes() == tomogram_bytes
    assert "Traceback" not in caplog.text and "Exception in ASGI application" not in caplog.text


def test_a_resumed_part_whose_kept_bytes_do_not_match_is_sent_again_whole(start_service, tomogram_bytes):
    """The part's checksum covers the whole part, kept bytes included: a wrong prefix is refused and forgotten."""
    import socket
    from urllib.parse import urlsplit

    svc = start_service()
    token = svc.token()
    with svc.client(token) as client:
        upload_id = init(client, tomogram_bytes).json()["upload_id"]
        part = tomogram_bytes[:PART]
        address = urlsplit(svc.url)
        with socket.create_connection((address.hostname, address.port)) as raw:
            head = (f"PUT /v1/uploads/{upload_id}/part/0 HTTP/1.1\r\nHost: {address.netloc}\r\n"
                    f"Authorization: Bearer {token}\r\nX-Part-SHA256: {sha(part)}\r\n"
                    f"Content-Length: {len(part)}\r\n\r\n")  # fmt: skip
            raw.sendall(head.encode() + bytes(1000))  # zeros, not the part's first bytes
            _taken_in(svc, upload_id, 0, 1000)
        assert client.get(f"/v1/uploads/{upload_id}", params={"part": 0}).json()["partial"] == {"0": 1000}
        url, digest = f"/v1/uploads/{upload_id}/part/0", {"X-Part-SHA256": sha(part)}
        wrong = client.put(url, content=part[1000:], headers={**digest, "X-Part-Offset": "1000"})
        assert wrong.status_code == 400 and wrong.json()["code"] == "part_checksum_mismatch"
        assert client.get(f"/v1/uploads/{upload_id}").json()["partial"] == {}
        assert client.put(url, content=part, headers=digest).status_code == 200
        record = upload(client, tomogram_bytes)
    assert (svc.settings.data / "files" / f"{record['file_id']}.mrc").read_bytes() == tomogram_bytes


def test_unused_files_are_removed_after_their_age_but_not_while_a_job_uses_them(start_service, tomogram_bytes):
    import numpy as np

    svc = start_service(file_max_age_s=3600)
    other = bytearray(tomogram_bytes)
    other[2000:2004] = np.float32(1.5).tobytes()  # another valid tomogram (one voxel differs)
    with svc.client(svc.token()) as client:
        used, unused = upload(client, tomogram_bytes), upload(client, bytes(other), filename="b.mrc")
        running = {"job_id": "1" * 32, "state": "running", "file_id": used["file_id"], "created_at": "2026-12-06"}
        svc.service.jobs.save(running)
        assert svc.service.clean_stale() == []  # young: kept
        later = time.time() + 3601
        assert svc.service.clean_stale(now=later) == [unused["file_id"]]
        assert client.get(f"/v1/uploads/{unused['file_id']}").status_code == 404
        assert init(client, bytes(other), filename="b.mrc").status_code == 201  # a new upload, not the old file
        files = svc.settings.data / "files"
        assert sorted(p.name for p in files.iterdir()) == sorted(f"{used['file_id']}{s}" for s in (".json", ".mrc"))
        svc.service.jobs.save(running | {"state": "completed"})
        assert svc.service.clean_stale(now=later) == [used["file_id"]]
        assert not any(files.iterdir())
