"""Benchmark: one full-size DSA-110 group (96 antennas, 16 x ~183 MB UVH5) into one Measurement Set.

Measured in one run, each in its own process so that peak memory is its own:

* baseline - pyuvdata: ``UVData.from_file`` of the 16 files, ``phase`` to the meridian at mid-time,
  ``write_ms`` (the path DSA-110's pipeline started from);
* labpipe - ``convert_group`` with per-subband work on a Dask LocalCluster (2 worker processes),
  staged in tmpfs (/dev/shm) and, separately, on disk, then moved into place.

Peak memory is the peak of the summed proportional set size (PSS) of the process and its children
(the Dask workers), sampled every 50 ms; tmpfs staging also holds the MS in RAM while it is built,
reported separately as ``labpipe_tmpfs_peak_gb``. The input files were just written, so both paths
read them from the page cache (the disk reads ~1.1 GB/s otherwise). The MSs are compared (DATA to
float32 precision, UVW within 1 mm, FLAG, TIME). The last line printed is one JSON object.

Run alone: ``flock /tmp/labpipe-bench.lock .venv/bin/python tests/bench/radio_convert.py [--antennas 96]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

START = dt.datetime(2025, 10, 13, 13, 28, 3)


def build_group(folder: Path, n_antennas: int) -> list[Path]:
    """The full-size group, built once and reused (a marker file says it is complete)."""
    marker = folder / f"complete-{n_antennas}.json"
    if marker.exists():
        return [Path(p) for p in json.loads(marker.read_text())]
    from astropy.time import Time
    from labpipe.radio import instrument as inst
    from labpipe.radio.simulate import Source, simulate_group

    shutil.rmtree(folder, ignore_errors=True)
    lst = Time(START, scale="utc").sidereal_time("apparent", inst.SITE_LON_DEG).deg
    rng = __import__("numpy").random.default_rng(0)
    sky = [Source(f"s{k}", lst + rng.uniform(-3, 3), 55 + rng.uniform(-3, 3), rng.uniform(0.1, 5)) for k in range(20)]
    started = time.perf_counter()
    group = simulate_group(folder / "incoming", START, n_antennas=n_antennas, catalog=sky, truth_dir=folder / "truth")
    files = [str(p) for p in sorted(group.files.values())]
    print(f"simulated {len(files)} files in {time.perf_counter() - started:.0f} s", flush=True)
    marker.write_text(json.dumps(files))
    return [Path(p) for p in files]


# --- memory sampling of a process tree ---------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory:
    """Peak summed PSS of a process and all its descendants, and peak tmpfs use, sampled in a thread."""

    def __init__(self, pid: int, tmpfs: Path | None = None) -> None:
        self.pid, self.tmpfs = pid, tmpfs
        self.peak_kb = 0
        self.tmpfs_base = shutil.disk_usage("/dev/shm").used if tmpfs else 0
        self.tmpfs_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids, frontier = [self.pid], [self.pid]
            while frontier:
                frontier = [c for p in frontier for c in _children(p)]
                pids += frontier
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in pids))
            if self.tmpfs:
                self.tmpfs_peak = max(self.tmpfs_peak, shutil.disk_usage("/dev/shm").used - self.tmpfs_base)
            self._stop.wait(0.05)

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1e6, self.tmpfs_peak / 1e9


# --- the two paths, each run in a child process ------------------------------------------------------

BASELINE = r"""
import json, sys, time, warnings, numpy as np
warnings.simplefilter("ignore")
from pyuvdata import UVData
from labpipe.radio.convert import meridian_phase_center
import resource
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
files, out = json.loads(sys.argv[1]), sys.argv[2]
started, cpu0 = time.perf_counter(), cpu()
uv = UVData.from_file(files, file_type="uvh5")
read = time.perf_counter()
mid = float(np.mean(np.unique(uv.time_array)))
ra, dec = meridian_phase_center(mid, uv.extra_keywords.get("phase_center_dec"))
uv.phase(lon=ra, lat=dec, epoch="J2000", phase_frame="icrs", cat_name="meridian")
phased = time.perf_counter()
uv.write_ms(out, clobber=True)
done = time.perf_counter()
timings = {"read_s": read - started, "phase_s": phased - read, "write_s": done - phased}
print(json.dumps({"seconds": done - started, "cpu_s": cpu() - cpu0, **timings}))
"""

LABPIPE = r"""
import json, sys, time, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import pyuvdata, casacore.tables, astropy.coordinates  # imported before the clock starts, as in a worker process
from labpipe.compute import DaskSettings, dask_client
from labpipe.radio.convert import ConvertSettings, convert_group
import resource
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
files, out, staging, fsync = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
settings = ConvertSettings(staging=staging, fsync=fsync, tmpfs_root=Path("/dev/shm/labpipe-bench"))
t0 = time.perf_counter()
with dask_client(DaskSettings(n_workers=2, threads_per_worker=1, memory_limit="2GiB")) as client:
    client.run(lambda: __import__("labpipe.radio.uvh5"))  # workers import the reader once, as a warm cluster has
    cluster_s = time.perf_counter() - t0
    workers0 = sum(client.run(cpu).values())
    started, cpu0 = time.perf_counter(), cpu()
    result = convert_group([Path(f) for f in files], out, settings=settings, client=client,
                           workspace=out.parent / ".staging")
    seconds, cpu_main = time.perf_counter() - started, cpu() - cpu0
    cpu_workers = sum(client.run(cpu).values()) - workers0
print(json.dumps({"seconds": seconds, "cpu_s": cpu_main + cpu_workers, "cpu_main_s": cpu_main,
                  "cluster_start_s": cluster_s, "timings": result.timings, "staging": result.staging,
                  "flagged": result.subbands_flagged}))
"""


def run_measured(code: str, args: list[str], tmpfs: bool = False) -> tuple[dict, float, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    memory = TreeMemory(child.pid, Path("/dev/shm") if tmpfs else None)
    out, err = child.communicate()
    peak_gb, tmpfs_gb = memory.stop()
    if child.returncode != 0:
        raise RuntimeError(err.decode()[-4000:])
    return json.loads(out.decode().strip().splitlines()[-1]), peak_gb, tmpfs_gb


def compare(ms_a: Path, ms_b: Path) -> dict:
    """labpipe's MS against pyuvdata's: DATA to float32 precision, UVW within 1 mm, flags and times equal."""
    import numpy as np
    from casacore.tables import table

    a, b = table(str(ms_a), ack=False), table(str(ms_b), ack=False)
    fa = table(f"{ms_a}/SPECTRAL_WINDOW", ack=False).getcol("CHAN_FREQ")[0]
    fb = table(f"{ms_b}/SPECTRAL_WINDOW", ack=False).getcol("CHAN_FREQ")[0]
    order = np.searchsorted(fa, fb)
    worst, flags_equal = 0.0, True
    for start in range(0, a.nrows(), 16384):
        n = min(16384, a.nrows() - start)
        da, db = a.getcol("DATA", start, n)[:, order], b.getcol("DATA", start, n)
        worst = max(worst, float(np.abs(da - db).max() / max(np.abs(db).max(), 1e-30)))
        flags_equal &= bool(np.array_equal(a.getcol("FLAG", start, n)[:, order], b.getcol("FLAG", start, n)))
    uvw = float(np.abs(a.getcol("UVW") - b.getcol("UVW")).max())
    times = bool(np.array_equal(a.getcol("TIME"), b.getcol("TIME")))
    agree = bool(np.allclose(fa[order], fb) and worst < 1e-6 and uvw < 1e-3 and flags_equal and times)
    return {"data_max_rel_diff": worst, "uvw_max_diff_m": uvw, "flags_equal": flags_equal, "times_equal": times,
            "agree": agree}  # fmt: skip


def du_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--antennas", type=int, default=96)
    parser.add_argument("--work", type=Path, default=Path("/tmp/labpipe-bench/radio"))
    parser.add_argument("--skip-baseline", action="store_true", help="Only labpipe's path (tuning runs).")
    parser.add_argument("--fsync", action="store_true", help="fsync the MS before the final rename (default off).")
    options = parser.parse_args()
    work = options.work
    files = build_group(work / f"group-{options.antennas}", options.antennas)
    input_gb = sum(f.stat().st_size for f in files) / 1e9
    print(f"input: {len(files)} files, {input_gb:.2f} GB ({input_gb / len(files) * 1e3:.0f} MB each)", flush=True)
    for f in files:  # warm the page cache for both paths alike
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)
    outputs = work / "out"
    shutil.rmtree(outputs, ignore_errors=True)
    outputs.mkdir(parents=True)
    arg_files = json.dumps([str(f) for f in files])

    runs = {}
    for staging in ("tmpfs", "disk"):
        target = outputs / staging / f"{START.isoformat()}.ms"
        target.parent.mkdir(parents=True)
        fsync = "1" if options.fsync else "0"
        result, peak, tmpfs = run_measured(LABPIPE, [arg_files, str(target), staging, fsync], tmpfs=True)
        runs[staging] = dict(result, peak_gb=peak, tmpfs_peak_gb=tmpfs, ms_gb=du_gb(target))
        print(f"labpipe ({staging} staging): {result['seconds']:.1f} s (CPU {result['cpu_s']:.1f} s, of which "
              f"this process {result['cpu_main_s']:.1f} s), peak PSS {peak:.2f} GB, tmpfs {tmpfs:.2f} GB, "
              f"timings {json.dumps({k: round(v, 2) for k, v in result['timings'].items()})}, "
              f"Dask cluster start {result['cluster_start_s']:.1f} s (not counted)", flush=True)  # fmt: skip
    labpipe = runs["tmpfs"]

    if options.skip_baseline:
        figures = {
            "labpipe_s": labpipe["seconds"],
            "labpipe_cpu_s": labpipe["cpu_s"],
            "labpipe_peak_gb": labpipe["peak_gb"],
        }
        print(json.dumps({k: round(v, 2) for k, v in figures.items()}))
        return
    baseline_ms = outputs / "pyuvdata.ms"
    base, base_peak, _ = run_measured(BASELINE, [arg_files, str(baseline_ms)])
    print(f"baseline (pyuvdata): {base['seconds']:.1f} s, CPU {base['cpu_s']:.1f} s (read {base['read_s']:.1f}, "
          f"phase {base['phase_s']:.1f}, "
          f"write_ms {base['write_s']:.1f}), peak PSS {base_peak:.2f} GB", flush=True)  # fmt: skip
    agreement = compare(outputs / "tmpfs" / f"{START.isoformat()}.ms", baseline_ms)
    print(f"outputs: {agreement}")
    disk = runs["disk"]
    print(f"tmpfs vs disk staging: {labpipe['seconds']:.1f} s vs {disk['seconds']:.1f} s "
          f"(tmpfs {disk['seconds'] / labpipe['seconds']:.2f}x faster)", flush=True)  # fmt: skip
    print(
        json.dumps(
            {
                "baseline_s": round(base["seconds"], 2),
                "labpipe_s": round(labpipe["seconds"], 2),
                "speedup": round(base["seconds"] / labpipe["seconds"], 2),
                "baseline_peak_gb": round(base_peak, 2),
                "labpipe_peak_gb": round(labpipe["peak_gb"], 2),
                "outputs_agree": agreement["agree"],
                "baseline_cpu_s": round(base["cpu_s"], 1),
                "labpipe_cpu_s": round(labpipe["cpu_s"], 1),
                "labpipe_disk_staging_s": round(disk["seconds"], 2),
                "labpipe_disk_staging_peak_gb": round(disk["peak_gb"], 2),
                "labpipe_tmpfs_peak_gb": round(labpipe["tmpfs_peak_gb"], 2),
                "input_gb": round(input_gb, 2),
                "ms_gb": round(labpipe["ms_gb"], 2),
                "antennas": options.antennas,
            }
        )
    )


if __name__ == "__main__":
    main()
