"""The segmentation service's client against the real service on loopback.

Uploads go through ``CuttingProxy`` (a real TCP proxy that drops connections and counts the bytes a client
sends), so "resumes without resending finished parts" is measured in bytes on the wire. Jobs run the real
``segment`` flow (the tiny test model) on the session's Prefect server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from labpipe.seg.client import Backoff, JobOptions, SegmentationClient, ServiceError, decode_preview
from labpipe.seg.mrc import read_header
from labpipe.seg.simulate import simulate_tomogram, write_simulated

from tests.lib.seg.cutting_proxy import CuttingProxy
from tests.lib.seg.service.conftest import PART

HEADERS = 1024  # bytes of one request's line and headers (the bearer token is ~300 of them), generously


@pytest.fixture
def tomogram(tmp_path) -> Path:
    """A valid 32x64x64 float32 MRC: 9 parts of 64 KiB (the last one 1 KiB, the header's)."""
    path, _ = write_simulated(tmp_path / "TS_01.mrc", simulate_tomogram((32, 64, 64), seed=5))
    return path


@pytest.fixture
def proxied(start_service):
    """(service, proxy in front of it, alice's token)."""
    service = start_service()
    proxy = CuttingProxy("127.0.0.1", int(service.url.rsplit(":", 1)[1]))
    yield service, proxy, service.token("alice")
    proxy.close()


def _kept_of_cut_part(service, index: int) -> int:
    """Bytes of part ``index`` the server recorded as received and synced after a cut (its own count)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for record in (service.settings.data / "uploads").glob(f"*/parts/{index}.partial"):
            return int(record.read_text())
        time.sleep(0.02)
    raise AssertionError(f"part {index}: no record of its received bytes")


def test_upload_cut_half_way_resumes_sending_only_the_rest(proxied, tomogram):
    service, proxy, token = proxied
    size = tomogram.stat().st_size
    assert size // PART == 8
    proxy.cut_after(int(4.5 * PART))  # part 4 dies half-way; no retries: the upload stops
    client = SegmentationClient(proxy.url, token, backoff=Backoff(attempts=1))
    with client, pytest.raises(ServiceError) as cut:
        client.upload(tomogram, part_bytes=PART, concurrency=1)
    assert cut.value.retryable and "only what the server does not hold is sent" in cut.value.hint
    kept = _kept_of_cut_part(service, 4)
    assert PART // 2 - 4 * HEADERS < kept <= PART // 2  # the half of part 4 that passed, less the requests' headers

    before = proxy.sent
    progress = []
    with SegmentationClient(proxy.url, token) as client:
        upload = client.upload(tomogram, part_bytes=PART, progress=lambda d, t: progress.append((d, t)))
    on_wire = proxy.sent - before
    assert upload.held_at_start == 4
    assert upload.sent_bytes == size - 4 * PART - kept  # the rest of part 4, then parts 5..8
    assert upload.sent_bytes <= on_wire < upload.sent_bytes + HEADERS * (upload.sent_parts + 2)  # + init, complete
    assert progress[0] == (4 * PART + kept, size) and progress[-1] == (size, size)
    assert upload.metadata["shape_zyx"] == [32, 64, 64]
    with SegmentationClient(service.url, token) as client:  # the same file again: nothing is sent
        again = client.upload(tomogram, part_bytes=PART)
    assert again.file_id == upload.file_id and again.sent_bytes == 0


def test_a_dropped_part_is_retried_with_backoff_from_where_it_was_cut(proxied, tomogram):
    _, proxy, token = proxied
    size = tomogram.stat().st_size
    proxy.cut_after(int(1.5 * PART))
    with SegmentationClient(proxy.url, token, backoff=Backoff(attempts=4, base=0.05)) as client:
        upload = client.upload(tomogram, part_bytes=PART, concurrency=1)
    assert proxy.cuts == 1
    # part 1 once whole (cut after about half of it reached the server), then only the rest; every other part once
    assert size + PART // 2 <= upload.sent_bytes < size + PART // 2 + 3 * HEADERS
    assert upload.metadata["shape_zyx"] == [32, 64, 64]


def test_errors_carry_the_servers_code_and_hint(proxied, tomogram, tmp_path):
    service, _, token = proxied
    with SegmentationClient(service.url, "not-a-token") as client, pytest.raises(ServiceError) as bad:
        client.server_info()
    assert (bad.value.code, bad.value.status, bad.value.retryable) == ("unauthenticated", 401, False)
    assert "labpipe seg token" in bad.value.hint

    truncated = tmp_path / "truncated.mrc"
    truncated.write_bytes(tomogram.read_bytes()[:-100])
    with SegmentationClient(service.url, token) as client:
        with pytest.raises(ServiceError) as refused:
            client.upload(truncated, part_bytes=PART)
        assert refused.value.code == "invalid_mrc" and "100 missing" in refused.value.problem
        assert refused.value.hint  # the validator's advice reaches the user
        upload = client.upload(tomogram, part_bytes=PART)
        with pytest.raises(ServiceError) as unknown:
            client.submit(JobOptions(model="no-such-model"), file_id=upload.file_id)
        assert unknown.value.code == "unknown_model"
        with pytest.raises(ServiceError) as missing:
            client.cancel("0" * 32)
        assert missing.value.code == "not_found"
    reader = service.token("bob", scopes=("read",))
    with SegmentationClient(service.url, reader) as client, pytest.raises(ServiceError) as forbidden:
        client.upload(tomogram, part_bytes=PART)
    assert forbidden.value.code == "forbidden" and "submit" in forbidden.value.problem


def test_a_file_read_for_its_digests_already_is_waited_for_not_read_twice(tomogram, monkeypatch):
    """The widget reads an opened file's fingerprint at once; an upload started meanwhile waits for that reading."""
    from labpipe.seg import client as seg_client

    reads, first_part_read, real_read = [], threading.Event(), seg_client._read_digests

    def slow_read(path, part_bytes, size, progress):
        reads.append(path)

        def slowly(done, total):
            first_part_read.set()
            time.sleep(0.05)  # 9 parts: ~0.45 s, long enough for the second caller to come while this one reads

        return real_read(path, part_bytes, size, slowly)

    monkeypatch.setattr(seg_client, "_read_digests", slow_read)
    seg_client.forget_fingerprints()
    with ThreadPoolExecutor(2) as pool:
        opened = pool.submit(seg_client.file_digests, tomogram, PART)
        assert first_part_read.wait(10)
        waited = []
        uploading = pool.submit(seg_client.file_digests, tomogram, PART, lambda done, total: waited.append(done))
        assert opened.result(10) == uploading.result(10)
    whole, parts = opened.result()
    assert reads == [tomogram] and waited == [tomogram.stat().st_size]  # one reading; the waiter told it is done
    assert whole == hashlib.sha256(tomogram.read_bytes()).hexdigest() and len(parts) == 9


def test_a_preview_decodes_to_labels_with_their_scale():
    labels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) % 3
    message = {"type": "preview", "seq": 7, "scale": 4, "shape": [2, 3, 4], "dtype": "uint8",
               "encoding": "zlib+base64", "payload": base64.b64encode(zlib.compress(labels.tobytes())).decode(),
               "published_at": 1.5}  # fmt: skip
    frame = decode_preview(message)
    assert np.array_equal(frame.labels, labels) and frame.scale == (4, 4, 4) and frame.sequence == 7
    with pytest.raises(ServiceError, match="does not fill shape"):
        decode_preview({**message, "shape": [2, 3, 5]})


def test_token_file_empty_or_missing_is_named(tmp_path):
    from labpipe.seg.client import read_token

    (tmp_path / "token").write_text("\n")
    with pytest.raises(ServiceError, match="empty"):
        read_token(tmp_path / "token")
    with pytest.raises(ServiceError, match="cannot read"):
        read_token(tmp_path / "absent")
    (tmp_path / "token").write_text("abc.def.ghi\n")
    assert read_token(tmp_path / "token") == "abc.def.ghi"


def labpipe_seg_submit(*args: str) -> subprocess.CompletedProcess:
    """The user's command, as a process (the entry point's error reporting included)."""
    command = [str(Path(sys.executable).with_name("labpipe")), "seg", "submit", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def test_seg_submit_reports_the_servers_error_and_hint(proxied, tomogram, tmp_path):
    service, _, _ = proxied
    (tmp_path / "token").write_text(service.token("carol", scopes=("read",)))
    result = labpipe_seg_submit(str(tomogram), "--server", service.url, "--token-file", str(tmp_path / "token"))
    assert result.returncode == 2
    assert "error: POST" in result.stderr and "submit" in result.stderr and "hint:" in result.stderr


@pytest.mark.slow
def test_seg_submit_runs_a_job_and_downloads_a_mask_aligned_with_the_tomogram(job_service, tmp_path):
    """``labpipe seg submit`` end to end: upload, job (the real flow), wait, signed downloads; then a tampered link."""

    path, _ = write_simulated(tmp_path / "TS_02.mrc", simulate_tomogram((40, 48, 48), seed=6), origin_xyz=(10, 20, 30))
    token_file = tmp_path / "token"
    token_file.write_text(job_service.token("alice") + "\n")
    out = tmp_path / "out"
    args = [str(path), "--server", job_service.url, "--token-file", str(token_file), "--model", "tiny-test",
            "--step-size", "0.5", "--part-mb", "8", "--out", str(out), "--json"]  # fmt: skip
    result = labpipe_seg_submit(*args)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["job"]["state"] == "completed"
    assert sorted(report["artifacts"]) == ["mask.mrc", "mask.nii.gz", "mask.nrrd", "stats.json"]
    tomo, mask = read_header(path), read_header(out / "mask.mrc")
    assert mask.shape_zyx == tomo.shape_zyx and mask.voxel_size_zyx == tomo.voxel_size_zyx
    assert mask.origin_xyz == tomo.origin_xyz and mask.start_xyz == tomo.start_xyz
    assert not list(out.glob(".*"))  # no staging left behind

    with SegmentationClient(job_service.url, job_service.token("alice")) as client:
        job = client.job(report["job"]["job_id"])
        url = job.artifacts["mask.mrc"]
        tampered = url.replace("mask.mrc", "stats.json", 1)
        with pytest.raises(ServiceError) as refused:
            client.download(tampered, tmp_path / "tampered" / "stats.json")
        assert refused.value.code == "signature_invalid"
        assert not (tmp_path / "tampered" / "stats.json").exists()
        assert client.download(url, tmp_path / "again.mrc").read_bytes() == (out / "mask.mrc").read_bytes()
