"""Benchmark: the segmentation service's client path, each figure against its baseline in the same run.

Run alone: ``flock /tmp/labpipe-bench.lock xvfb-run -a .venv/bin/python tests/bench/seg_service.py [--size-gb 2]``
(``--figures upload,previews,e2e`` picks some; with a display the preview latency is measured to the napari
layer's update; without one, to the decoded array, and the JSON says which).

1. **Upload throughput**: a ``--size-gb`` tomogram (float32 MRC) uploaded by ``SegmentationClient.upload``
   (fingerprint, init, parts with their checksums, complete: the server's whole SHA-256 and MRC validation, run
   as the parts arrive, are compared) to ``labpipe seg serve``'s app in its own process, against
   ``curl --upload-file`` of the same file to a plain PUT-to-file server (Python's http.server, its own process)
   on loopback. ``upload_ratio`` = curl's seconds / ours (target >= 0.8). Each side's CPU seconds are reported
   too (``upload_cpu_s``): on this host the client and the server share two cores, so the work the service must
   do beyond curl's (the client's SHA-256 before ``init``; the server's SHA-256 and voxel scan) shows in the wall
   time as it would not between a desktop and a GPU server.
1b. **The same over a shaped link** (``--link 1gbit``, as root): the rounds again inside a network namespace of
   their own whose loopback is shaped by a token bucket (``tc qdisc ... tbf rate 1gbit``), both curl's and ours:
   a desktop's link to the lab's server rather than memory copies. ``link_upload_ratio``; the namespace is
   removed at the end.
2. **Bytes re-sent after a cut at 50 %**: the same client through a TCP proxy that drops the connection half-way
   (no retries: the upload stops), then the upload again. ``resent_after_cut_bytes`` = every byte the client
   pushed through the proxy over both attempts (headers included) minus the file's size (target: < one part).
3. **Preview latency**: a job's run publishes previews (``LiveFolder.publish_preview``, what the segment flow
   calls) into the job's live folder from another process's view (a file the service watches); the client
   follows the WebSocket and draws each into the napari widget's labels layer. Latency = layer updated -
   ``published_at`` (same host clock); p95 of ``--previews`` (target < 1 s).
4. **End to end**: one job through the API (upload, submit, the real ``segment`` flow as a deployment run by a
   Prefect Runner in a subprocess, WebSocket until completed, signed download of the mask) against
   ``labpipe seg run`` of the same tomogram with the same model (target: within 10 %).

The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests.lib.seg.* helpers

MB = 1 << 20
PUT_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
target = sys.argv[1]
class Put(BaseHTTPRequestHandler):
    def do_PUT(self):
        left = int(self.headers["Content-Length"])
        with open(target, "wb") as out:
            while left:
                block = self.rfile.read(min(left, 1 << 20))
                out.write(block)
                left -= len(block)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Put)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def write_big_tomogram(path: Path, size_bytes: int) -> Path:
    """A float32 MRC of about ``size_bytes``: 1024 x 1024 sections of noise (so validation reads real voxels)."""
    import mrcfile

    nz = max(2, size_bytes // (1024 * 1024 * 4))
    rng = np.random.default_rng(0)
    slab = rng.normal(size=(8, 1024, 1024)).astype(np.float32)
    with mrcfile.new_mmap(path, shape=(nz, 1024, 1024), mrc_mode=2, overwrite=True) as mrc:
        mrc.voxel_size = 10.0
        for z in range(0, nz, 8):
            mrc.data[z : z + 8] = slab[: min(8, nz - z)] + z
    return path


def process_cpu_s(pid: int) -> float:
    """A running process's CPU seconds so far (user + system, all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rusage_cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds (user + system) of this process, or of its children waited for (``RUSAGE_CHILDREN``)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def curl_upload(path: Path, work: Path) -> tuple[float, dict]:
    """``curl --upload-file`` to a plain PUT-to-file server on loopback (its own process): seconds, CPU seconds."""
    copy = work / "curl-copy"
    server = subprocess.Popen([sys.executable, "-c", PUT_SERVER, str(copy)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        server_cpu, curl_cpu = process_cpu_s(server.pid), rusage_cpu_s(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        # no "Expect: 100-continue": http.server (HTTP/1.0) never answers it, and curl would wait 1 s before sending
        curl = ["curl", "-sS", "--fail", "-H", "Expect:", "--upload-file", str(path), "-o", "/dev/null"]
        subprocess.run([*curl, f"http://127.0.0.1:{port}/upload"], check=True)
        seconds = time.perf_counter() - started
        curl_cpu = rusage_cpu_s(resource.RUSAGE_CHILDREN) - curl_cpu
        cpu = {"client": curl_cpu, "server": process_cpu_s(server.pid) - server_cpu}
        assert copy.stat().st_size == path.stat().st_size
        return seconds, cpu
    finally:
        server.terminate()
        server.wait()
        copy.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- the service's process


class BenchRunner:
    """The orchestrator's stand-in for figures 1-3 (no flow runs): a job is 'running' until told otherwise.

    Its previews are published into the job's live folder by the benchmark, with the segment flow's own
    ``LiveFolder.publish_preview``: the service cannot tell them from a run's.
    """

    name = "bench"

    def submit(self, job_id, parameters):
        from labpipe.seg.service.jobs import RunRef

        return RunRef(job_id, f"bench-{job_id[:8]}")

    def status(self, run_id):
        from labpipe.seg.service.jobs import RunStatus

        return RunStatus("RUNNING", "Previewing")

    def cancel(self, run_id):
        pass


def settings_for(data: Path, key: Path, **kw):
    from labpipe.seg.service.settings import ServiceSettings

    return ServiceSettings(data=data, key_file=key, default_model="tiny-test", free_disk_reserve_bytes=0,
                           max_upload_bytes=64 << 30, rate_limit_per_minute=100_000, **kw)  # fmt: skip


def serve(data: Path, key: Path) -> None:
    """``--serve``: the service app on a free loopback port (printed), with ``BenchRunner``; runs until killed."""
    import uvicorn
    from labpipe.seg.service.server import build_service, uvicorn_config
    from labpipe.seg.service.service import Environment

    models = {"tiny-test": {"name": "tiny-test"}}
    service = build_service(settings_for(data, key), BenchRunner(), Environment(models=lambda: models))
    server = uvicorn.Server(uvicorn_config(service, "127.0.0.1", 0, None, None))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    print(server.servers[0].sockets[0].getsockname()[1], flush=True)
    threading.Event().wait()


class ServiceProcess:
    def __init__(self, work: Path) -> None:
        from labpipe.seg.service.auth import Keys, mint_token

        work.mkdir(parents=True, exist_ok=True)
        self.data, key = work / "service", work / "service.key"
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", str(self.data), str(key)],
                                        stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}"
        self.token = mint_token(Keys.from_file(key), "bench", ["read", "submit"], 3600)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


# ----------------------------------------------------------------------------------- figures


def upload_rounds(big: Path, work: Path, part_bytes: int, concurrency: int, repeat: int) -> dict:
    """``repeat`` rounds of curl then ours (each a fresh service, this process's fingerprints forgotten: the cold
    path), medians compared, with each side's CPU seconds."""
    from labpipe.seg.client import SegmentationClient, forget_fingerprints

    size = big.stat().st_size
    curl_runs, ours_runs, phases, curl_cpu, ours_cpu = [], [], [], [], []
    for round_ in range(repeat):
        seconds, cpu = curl_upload(big, work)
        curl_runs.append(seconds)
        curl_cpu.append(cpu)
        service = ServiceProcess(work / f"round-{round_}")
        try:
            forget_fingerprints()
            with SegmentationClient(service.url, service.token, timeout=600) as client:
                server_cpu, client_cpu = process_cpu_s(service.process.pid), rusage_cpu_s()
                started = time.perf_counter()
                upload = client.upload(big, part_bytes=part_bytes, concurrency=concurrency)
                ours_runs.append(time.perf_counter() - started)
                ours_cpu.append({"client": rusage_cpu_s() - client_cpu,
                                 "server": process_cpu_s(service.process.pid) - server_cpu})  # fmt: skip
            assert upload.sent_bytes == size and upload.metadata["shape_zyx"][1:] == [1024, 1024]
            phases.append(upload.seconds)
        finally:
            service.stop()
            shutil.rmtree(work / f"round-{round_}", ignore_errors=True)
        print(f"round {round_ + 1}/{repeat}: curl {curl_runs[-1]:.2f} s, ours {ours_runs[-1]:.2f} s "
              f"{upload.seconds}", file=sys.stderr, flush=True)  # fmt: skip
    curl_s, ours_s = statistics.median(curl_runs), statistics.median(ours_runs)
    phase_s = {name: round(statistics.median(p[name] for p in phases), 3) for name in phases[0]}

    def cpu_medians(runs: list[dict]) -> dict:
        return {side: round(statistics.median(r[side] for r in runs), 2) for side in ("client", "server")}

    return {
        "size_bytes": size,
        "part_bytes": part_bytes,
        "concurrency": concurrency,
        "upload_rounds": repeat,
        "curl_upload_s": round(curl_s, 2),
        "upload_s": round(ours_s, 2),
        "curl_upload_runs_s": [round(x, 2) for x in curl_runs],
        "upload_runs_s": [round(x, 2) for x in ours_runs],
        "upload_mb_s": round(size / MB / ours_s, 1),
        "curl_mb_s": round(size / MB / curl_s, 1),
        "upload_ratio": round(curl_s / ours_s, 3),  # medians
        "upload_ratio_runs": [round(c / o, 3) for c, o in zip(curl_runs, ours_runs, strict=True)],
        "upload_phases_s": phase_s,  # medians: fingerprint (client SHA-256), parts, complete (server's checks)
        # the widget reads the fingerprint when a file is opened: what an upload pressed afterwards takes
        "upload_ratio_after_open": round(curl_s / (ours_s - phase_s["fingerprint"]), 3),
        "upload_cpu_s": {"curl": cpu_medians(curl_cpu), "ours": cpu_medians(ours_cpu)},  # medians per side
    }


def upload_figures(big: Path, work: Path, part_bytes: int, concurrency: int, repeat: int) -> dict:
    """The upload rounds, then the cut at 50 % and the resume."""
    from labpipe.seg.client import Backoff, SegmentationClient, ServiceError

    from tests.lib.seg.cutting_proxy import CuttingProxy

    figures = upload_rounds(big, work, part_bytes, concurrency, repeat)
    size = big.stat().st_size
    service = ServiceProcess(work / "cut")
    try:
        with open(big, "r+b") as handle:  # another file now (one voxel differs): nothing on the server yet
            handle.seek(size - 4)
            handle.write(np.float32(1234.5).tobytes())
        proxy = CuttingProxy("127.0.0.1", int(service.url.rsplit(":", 1)[1]))
        proxy.cut_after(size // 2)
        with SegmentationClient(proxy.url, service.token, backoff=Backoff(attempts=1), timeout=600) as client:
            try:
                client.upload(big, part_bytes=part_bytes, concurrency=concurrency)
                raise AssertionError("the cut did not stop the upload")
            except ServiceError as exc:
                assert exc.retryable
        with SegmentationClient(proxy.url, service.token, timeout=600) as client:
            resumed = client.upload(big, part_bytes=part_bytes, concurrency=concurrency)
        proxy.close()
    finally:
        service.stop()
    return {
        **figures,
        "resent_after_cut_bytes": proxy.sent - size,
        "parts_held_after_cut": resumed.held_at_start,
        "parts_total": resumed.parts,
    }


def shaped_link_figures(rate: str, size_gb: float, part_mb: int, concurrency: int, repeat: int, work: Path) -> dict:
    """The upload rounds again inside a network namespace made for them, its loopback shaped to ``rate`` (tc's
    token bucket): this script runs them there (``--rounds-only``) and its last line is read back."""
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")):
        return {"link_rate": rate, "link_skipped": "needs root and iproute2 (ip, tc)"}
    namespace = f"labpipe-bench-{os.getpid()}"
    inside = ["ip", "netns", "exec", namespace]
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        # burst: at least one 64 KiB loopback packet; latency: how long a packet may wait in the bucket
        tbf = ["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate, "burst", "512kb", "latency", "50ms"]
        subprocess.run([*inside, *tbf], check=True)
        sizes = ["--size-gb", str(size_gb), "--part-mb", str(part_mb), "--concurrency", str(concurrency)]
        rounds = ["--rounds-only", "--repeat", str(repeat), "--work", str(work / "link")]
        command = [sys.executable, __file__, *sizes, *rounds]
        done = subprocess.run([*inside, *command], check=True, stdout=subprocess.PIPE, text=True)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
        shutil.rmtree(work / "link", ignore_errors=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    dropped = ("size_bytes", "part_bytes", "concurrency", "upload_rounds")  # the same as the loopback rounds'
    return {"link_rate": rate, **{f"link_{name}": value for name, value in measured.items() if name not in dropped}}


def preview_figures(work: Path, count: int) -> dict:
    """Previews published into a job's live folder, followed by the client into the napari widget (or decoded)."""
    from labpipe.seg.client import JobOptions, SegmentationClient
    from labpipe.seg.mrc import read_header
    from labpipe.seg.preview import Preview
    from labpipe.seg.service.live import LiveFolder
    from labpipe.seg.simulate import simulate_tomogram, write_simulated

    tomogram, _ = write_simulated(work / "preview.mrc", simulate_tomogram((64, 96, 96), seed=1))
    info = read_header(tomogram)
    service = ServiceProcess(work / "p")
    viewer = None
    try:
        with SegmentationClient(service.url, service.token) as client:
            upload = client.upload(tomogram, part_bytes=8 * MB)
            job = client.submit(JobOptions(), file_id=upload.file_id)
        live = LiveFolder(service.data / "jobs" / job.id / "live")
        if os.environ.get("DISPLAY"):
            import napari
            from labpipe.seg.desktop.widget import SegmentationWidget
            from qtpy.QtWidgets import QApplication

            viewer = napari.Viewer(show=True)
            widget = SegmentationWidget(viewer)
            widget.server_edit.setText(service.url)
            os.environ["LABPIPE_SEG_TOKEN"] = service.token
            widget.open_tomogram(tomogram)
            widget.job_id, widget.job_state = job.id, "running"
            widget._follow(job.id)
            app = QApplication.instance()

            def shown() -> int:
                app.processEvents()
                return widget.previews_shown

            latencies, measured = widget.preview_latencies, "napari labels layer updated"
        else:
            received: list[float] = []

            def on_message(message):
                if message.get("type") == "preview":
                    received.append(time.time() - message["frame"].published_at)

            stream = SegmentationClient(service.url, service.token).preview_stream(job.id, on_message)

            def shown() -> int:
                time.sleep(0.005)
                return len(received)

            latencies, measured = received, "preview decoded (no display: napari not drawn)"
        rng = np.random.default_rng(2)
        for n in range(count):
            labels = rng.integers(0, 3, size=(16, 24, 24), dtype=np.uint8)
            live.publish_preview(Preview(4, labels, labels == 0, n, count), info)
            deadline = time.monotonic() + 10
            while shown() <= n and time.monotonic() < deadline:
                pass
            time.sleep(0.2)  # the runner publishes every few seconds; here 5 per second
        if viewer is None:
            stream.stop()
        else:
            widget.shutdown()
            viewer.close()
    finally:
        service.stop()
    return {
        "previews_published": count,
        "previews_shown": len(latencies),
        "preview_latency_p50_s": round(statistics.median(latencies), 4) if latencies else None,
        "preview_latency_p95_s": round(percentile(latencies, 0.95), 4) if latencies else None,
        "preview_latency_measured_to": measured,
    }


def end_to_end_figures(work: Path, shape: tuple[int, int, int]) -> dict:
    """One job through the API (the real flow, run by a Prefect Runner) against ``labpipe seg run``."""
    import uvicorn
    from labpipe.deployments.platform import ensure_gpu_limit
    from labpipe.flows.segment import PrefectJobRunner, segment
    from labpipe.layout import Layout
    from labpipe.seg.client import JobOptions, SegmentationClient
    from labpipe.seg.service.auth import Keys, mint_token
    from labpipe.seg.service.server import build_service, host_environment, uvicorn_config
    from labpipe.seg.simulate import simulate_tomogram, write_simulated
    from prefect.client.orchestration import get_client
    from prefect.runner import Runner
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tests.lib.seg.seg_model import MODEL, trained_tiny_model

    home = Path(os.environ["LABPIPE_HOME"])
    started = time.perf_counter()
    trained_tiny_model(home)
    training_s = time.perf_counter() - started
    tomogram, _ = write_simulated(work / "e2e.mrc", simulate_tomogram(shape, seed=3))
    with prefect_test_harness(server_startup_timeout=120):
        with get_client(sync_client=True) as prefect:
            ensure_gpu_limit(prefect, 0)
        runner = Runner(name="seg-bench", query_seconds=0.5, pause_on_shutdown=False)
        # loaded from the source tree as a worker does (python -m prefect.engine with the entrypoint)
        runner.add_flow(segment.from_source(source=str(ROOT), entrypoint="flows/segment.py:segment"), name="bench")
        loop = asyncio.new_event_loop()
        threading.Thread(target=lambda: loop.run_until_complete(runner.start()), daemon=True).start()
        settings = settings_for(work / "e2e-service", work / "e2e.key")
        service = build_service(settings, PrefectJobRunner("segment/bench"), host_environment(Layout.default(home)))
        server = uvicorn.Server(uvicorn_config(service, "127.0.0.1", 0, None, None))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        token = mint_token(Keys.from_file(settings.key_file), "bench", ["read", "submit"], 3600)

        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
        cli = [str(Path(sys.executable).with_name("labpipe")), "seg", "run", str(tomogram), "--model", MODEL]
        started = time.perf_counter()
        subprocess.run([*cli, "--run", "bench-cli"], check=True, env=env, capture_output=True)
        cli_s = time.perf_counter() - started

        started = time.perf_counter()
        with SegmentationClient(url, token) as client:
            upload = client.upload(tomogram, part_bytes=8 * MB)
            uploaded_s = time.perf_counter() - started
            job = client.submit(JobOptions(model=MODEL), file_id=upload.file_id)
            done = threading.Event()
            stream = client.preview_stream(
                job.id, lambda m: done.set() if m.get("type") in ("completed", "error") else None
            )
            done.wait(1800)
            stream.stop()
            job = client.job(job.id)
            assert job.state == "completed", job.raw
            client.download_artifacts(job, work / "e2e-artifacts", names=("mask.mrc",))
        api_s = time.perf_counter() - started
        server.should_exit = True
        asyncio.run_coroutine_threadsafe(runner.astop(), loop).result(30)
    return {
        "e2e_shape_zyx": list(shape),
        "model_training_s": round(training_s, 1),
        "cli_run_s": round(cli_s, 2),
        "api_job_s": round(api_s, 2),
        "api_upload_s": round(uploaded_s, 2),
        "api_vs_cli_ratio": round(api_s / cli_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="tomogram size for the upload figures (GiB)")
    parser.add_argument("--part-mb", type=int, default=16, help="upload part size (8-32 MiB)")
    parser.add_argument("--concurrency", type=int, default=2, help="parts in flight")
    parser.add_argument("--repeat", type=int, default=3, help="upload rounds (curl, then ours) for the medians")
    parser.add_argument("--previews", type=int, default=60, help="previews for the latency figure")
    parser.add_argument("--e2e-shape", type=int, nargs=3, default=(64, 96, 96), help="Z Y X of the end-to-end job")
    parser.add_argument("--link", default="1gbit", help="shaped link rate for the upload rounds again ('' skips)")
    parser.add_argument("--figures", default="upload,previews,e2e", help="which figures (e2e trains a model first)")
    parser.add_argument("--rounds-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--serve", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="labpipe-bench-seg-service-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LABPIPE_HOME", str(work / "home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    wanted = set(args.figures.split(","))
    figures: dict = {"load_average_start": os.getloadavg()}
    if args.rounds_only or "upload" in wanted:
        big = write_big_tomogram(work / "big.mrc", int(args.size_gb * (1 << 30)))
        try:
            if args.rounds_only:  # inside the shaped link's namespace (shaped_link_figures)
                print(json.dumps(upload_rounds(big, work, args.part_mb * MB, args.concurrency, args.repeat)))
                return
            figures.update(upload_figures(big, work, args.part_mb * MB, args.concurrency, args.repeat))
        finally:
            big.unlink(missing_ok=True)
        if args.link:
            print(f"the upload rounds over a {args.link} link", file=sys.stderr, flush=True)
            link = shaped_link_figures(args.link, args.size_gb, args.part_mb, args.concurrency, args.repeat, work)
            figures.update(link)
        print(json.dumps(figures), flush=True)
    if "previews" in wanted:
        figures.update(preview_figures(work, args.previews))
        print(json.dumps(figures), flush=True)
    if "e2e" in wanted:
        figures.update(end_to_end_figures(work, tuple(args.e2e_shape)))
    figures["load_average_end"] = os.getloadavg()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
