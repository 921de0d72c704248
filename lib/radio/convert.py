"""Convert one group of subband files into one Measurement Set.

1. Read every file's header (h5py) and check it belongs: same rows (times and
   baselines), antennas, polarizations, channel count and drift-scan phasing;
   a file that does not is *bad* (named, with the reason) and, by policy, either
   fails the group or is flagged like a missing subband.
2. Build the group's metadata with pyuvdata from one good file (metadata only),
   widen it to the whole band (missing subbands included, flagged), and phase it
   to the meridian at the group's mid-time: RA of the meridian, Dec the pointing
   declination the files record (``extra_keywords["phase_center_dec"]``), or
   the zenith as ``UVData.phase_to_time`` does when none is recorded. pyuvdata
   computes the UVWs, so they are pyuvdata's own.
3. Fan out per subband on Dask (``phase_subband``: read, rotate by the new w,
   conjugate to the CASA convention, ascending channels), at most
   ``max_in_flight`` at once so memory stays bounded, while this process writes
   each finished subband into its slice of the MS (``MsWriter``).
4. Stage under tmpfs (``/dev/shm/labpipe/<group>/<attempt>/``) when it has room,
   else on disk beside the final folder; then move into place atomically (a copy
   to the radio tree's ``tmp/staging/<group>/<attempt>/`` on the final file
   system, fsync, then ``rename``). The rename runs inside ``publish_guard``: the
   streaming worker only renames while its claim on the group is still held.
   Each attempt removes its own folders after success and after failure, and
   never another attempt's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from labpipe.errors import ConflictError, InvalidInput
from labpipe.files import path_component
from labpipe.radio import instrument as inst
from labpipe.radio.metadata import GroupMeta, phase_to, read_group_meta
from labpipe.radio.ms import MsWriter
from labpipe.radio.naming import fs_safe, parse_subband_name
from labpipe.radio.uvh5 import SubbandHeader, phase_part, read_header
from pydantic import BaseModel, Field

log = logging.getLogger("labpipe.radio.convert")


class ClaimLost(ConflictError):
    """The attempt converting a group no longer holds its claim: it must neither publish nor quarantine."""


class ConvertSettings(BaseModel):
    """How a group becomes a Measurement Set."""

    n_subbands: int = Field(inst.N_SUBBANDS, description="Subbands in a complete group.")
    bad_file_policy: Literal["flag", "fail"] = Field(
        "flag",
        description="A truncated, corrupt or wrong-shaped file: flag its subband and convert, or fail the group.",
    )
    staging: Literal["auto", "tmpfs", "disk"] = Field(
        "auto",
        description="Where the phased per-subband parts go: tmpfs when it has room (auto), always tmpfs, or the "
        "group's folder in the radio tree's tmp/staging (needed when Dask workers run on other hosts).",
    )
    tmpfs_root: Path = Field(Path("/dev/shm/labpipe"), description="tmpfs staging root (one folder per group).")
    tmpfs_headroom: float = Field(1.5, description="Use tmpfs only if its free space is this many times the need.")
    max_in_flight: int = Field(
        4, description="Subband slabs being phased at once (~85 MB of parts each at 96 antennas)."
    )
    tile_rows: int = Field(512, description="Rows per tile of the MS data columns.")
    fsync: bool = Field(True, description="fsync the MS files before the final rename (durable on power loss).")
    weight_spectrum: Literal["auto", "always"] = Field(
        "auto",
        description="WEIGHT_SPECTRUM (nsamples per channel): only when nsamples vary across a row's channels "
        "(auto; else WEIGHT holds them, as CASA reads it), or always (0.7 GB more per full group).",
    )


@dataclass
class ConversionResult:
    """What a conversion produced."""

    ms_path: str
    n_rows: int
    n_channels: int
    subbands_written: list[int]
    subbands_flagged: list[int]
    bad_files: dict[str, str] = field(default_factory=dict)  # path -> reason
    phase_ra_deg: float = 0.0
    phase_dec_deg: float = 0.0
    mid_time: str = ""
    first_jd: float = 0.0
    last_jd: float = 0.0
    staging: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        return asdict(self)


# --- step 1: which files belong ----------------------------------------------------------------------


@dataclass
class GroupPlan:
    """The checked inputs of one group: good files per subband, bad ones with their reasons."""

    good: dict[int, SubbandHeader]
    bad: dict[str, str]
    subband_of: dict[str, int]
    n_subbands: int
    n_channels: int
    channel_width_hz: float
    top_freq_hz: float

    @property
    def missing(self) -> list[int]:
        return [sb for sb in range(self.n_subbands) if sb not in self.good]

    def band(self) -> np.ndarray:
        """Ascending channel centres of the whole group (present and missing subbands)."""
        offsets = np.arange(self.n_subbands * self.n_channels)
        return np.sort(self.top_freq_hz - self.channel_width_hz * offsets)

    def channels(self, subband: int) -> slice:
        """Where a subband's channels sit in the ascending band (sb00, the top, is last)."""
        start = (self.n_subbands - 1 - subband) * self.n_channels
        return slice(start, start + self.n_channels)


def _subband_number(path: Path) -> int:
    name = parse_subband_name(path.name)
    if name is None:
        raise InvalidInput(path, "not a subband file name", "expected YYYY-MM-DDTHH:MM:SS_sbNN.hdf5")
    return name.subband


def plan_group(files: Sequence[Path], n_subbands: int = inst.N_SUBBANDS) -> GroupPlan:
    """Check every file's header against the group's majority; never raises for one bad file."""
    headers: dict[str, SubbandHeader] = {}
    bad: dict[str, str] = {}
    subband_of: dict[str, int] = {}
    for path in map(Path, files):
        sb = _subband_number(path)
        if not 0 <= sb < n_subbands:
            bad[str(path)] = f"subband {sb} outside 0..{n_subbands - 1}"
            continue
        if sb in subband_of.values():
            raise InvalidInput(path, f"a second file for subband {sb}", "a group holds one file per subband")
        subband_of[str(path)] = sb
        try:
            headers[str(path)] = read_header(path)
        except InvalidInput as exc:
            bad[str(path)] = exc.problem
    if not headers:
        raise InvalidInput(", ".join(sorted(bad)) or "group", "no readable subband file", "nothing to convert")

    def key(h: SubbandHeader):
        return (h.n_blts, h.n_pols, h.polarizations, h.layout_digest, h.antenna_numbers, round(h.unique_times_jd[0], 7))

    reference = Counter(key(h) for h in headers.values()).most_common(1)[0][0]
    widths = Counter(round(h.channel_width_hz, 3) for h in headers.values())
    counts = Counter(h.n_freqs for h in headers.values())
    n_channels, width = counts.most_common(1)[0][0], widths.most_common(1)[0][0]
    good: dict[int, SubbandHeader] = {}
    tops = []
    for path, h in headers.items():
        sb = subband_of[path]
        problem = None
        if h.projected:
            problem = "data are already phased (projected); expected drift-scan (unprojected) DSA-110 data"
        elif h.n_freqs != n_channels:
            problem = f"{h.n_freqs} channels where the other subbands have {n_channels}"
        elif key(h) != reference:
            problem = "its rows (times, baselines, antennas or polarizations) differ from the other subbands'"
        elif abs(h.channel_width_hz - width) > 1.0:
            problem = f"channel width {h.channel_width_hz} Hz differs from the group's {width} Hz"
        if problem:
            bad[path] = problem
            continue
        top = float(h.freqs_hz.max()) + sb * n_channels * width
        tops.append((path, top))
        good[sb] = h
    top = float(np.median([t for _, t in tops]))
    for path, t in tops:
        if abs(t - top) > width / 2:
            bad[path] = f"frequencies {_mhz(headers[path].freqs_hz)} do not fit subband {subband_of[path]} of this band"
            good.pop(subband_of[path], None)
    if not good:
        raise InvalidInput(", ".join(sorted(bad)), "no subband file fits the group", "check the files")
    return GroupPlan(good, bad, subband_of, n_subbands, int(n_channels), float(width), top)


def _mhz(freqs: np.ndarray) -> str:
    return f"{freqs.min() / 1e6:.3f}-{freqs.max() / 1e6:.3f} MHz"


# --- step 2: metadata and phase centre ---------------------------------------------------------------


def meridian_phase_center(mid_jd: float, dec_rad: float | None) -> tuple[float, float]:
    """ICRS (ra, dec) in radians of the meridian at ``mid_jd``: at ``dec_rad``, or the zenith when None."""
    import astropy.units as u
    from astropy.coordinates import AltAz, HADec, SkyCoord
    from astropy.time import Time

    when = Time(mid_jd, format="jd")
    if dec_rad is None:  # exactly what UVData.phase_to_time does
        frame = AltAz(obstime=when, location=inst.site_location())
        coord = SkyCoord(alt=90 * u.deg, az=0 * u.deg, frame=frame)
    else:
        frame = HADec(obstime=when, location=inst.site_location())
        coord = SkyCoord(ha=0 * u.deg, dec=dec_rad * u.rad, frame=frame)
    icrs = coord.transform_to("icrs")
    return float(icrs.ra.rad), float(icrs.dec.rad)


def group_metadata(plan: GroupPlan, ms_name: str) -> GroupMeta:
    """The group's metadata over the whole band, phased to the meridian at mid-time (UVWs by pyuvdata)."""
    reference = plan.good[min(plan.good)]
    meta = read_group_meta(Path(reference.path), plan.band(), plan.channel_width_hz)
    ra, dec = meridian_phase_center(meta.mid_jd, reference.pointing_dec_rad)
    return phase_to(meta, ra, dec, ms_name)


# --- step 3: fan-out ---------------------------------------------------------------------------------


class _InProcess:
    """The executor used without a Dask client: threads in this process (numpy and h5py release the GIL)."""

    def __init__(self, workers: int = 2) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(workers)

    def submit(self, fn, *args, **kwargs):
        kwargs.pop("pure", None)
        return self.pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def row_slabs(n_rows: int, chunk_rows: Sequence[int], target: int = 4) -> tuple[list[tuple[int, int]], int]:
    """About ``target`` slabs of rows and a read block size, both multiples of the files' HDF5 chunks.

    Aligned reads never decompress a chunk twice; slabs let this process write the first rows
    while workers still phase the last ones.
    """
    align = 1
    for rows in chunk_rows:
        align = math.lcm(align, max(1, int(rows)))
    if align > n_rows:
        align = 1
    size = max(align, math.ceil(n_rows / target / align) * align)
    block = min(size, max(align, (16384 // align) * align))
    return [(lo, min(lo + size, n_rows)) for lo in range(0, n_rows, size)], block


@dataclass
class _Task:
    slab: int
    subband: int


class _PartScheduler:
    """Submit ``phase_part`` tasks slab by slab, at most ``window`` pending; iterate over finished ones.

    Iterating yields ``(task, Part | InvalidInput)``; ``drop(subband)`` stops a bad subband's remaining slabs.
    """

    def __init__(self, client, plan: GroupPlan, w_m, pol_order, parts_dir: Path, window: int) -> None:
        reference = plan.good[min(plan.good)]
        self.slabs, self.block = row_slabs(reference.n_blts, reference.chunk_rows)
        self.plan, self.w_m, self.pol_order, self.parts_dir, self.window = plan, w_m, pol_order, parts_dir, window
        self.client = client
        self.executor = _InProcess() if client is None else client
        self.todo = [_Task(k, sb) for k in range(len(self.slabs)) for sb in sorted(plan.good)]
        self.total = len(self.todo)
        self.pending: dict = {}
        self.dropped: set[int] = set()

    def drop(self, subband: int) -> None:
        self.dropped.add(subband)

    def _submit(self) -> None:
        while self.todo and len(self.pending) < self.window:
            task = self.todo.pop(0)
            if task.subband in self.dropped:
                continue
            lo, hi = self.slabs[task.slab]
            prefix = str(self.parts_dir / f"sb{task.subband:02d}_{task.slab:03d}")
            path = self.plan.good[task.subband].path
            args = (path, task.subband, self.w_m[lo:hi], lo, hi, prefix, self.pol_order, self.block)
            self.pending[self.executor.submit(phase_part, *args, pure=False)] = task

    def __iter__(self):
        try:
            self._submit()
            while self.pending:
                for future in (_wait_threads if self.client is None else _wait_dask)(list(self.pending)):
                    task = self.pending.pop(future)
                    try:
                        outcome = future.result()
                    except InvalidInput as exc:
                        outcome = exc
                    yield task, outcome
                self._submit()
        finally:
            for future in self.pending:
                future.cancel()
            if self.client is None:
                self.executor.close()


def _wait_threads(futures):
    from concurrent.futures import FIRST_COMPLETED, wait

    return wait(futures, return_when=FIRST_COMPLETED).done


def _wait_dask(futures):
    from distributed import wait

    return wait(futures, return_when="FIRST_COMPLETED").done


# --- step 4: staging and the final move --------------------------------------------------------------


def _parts_bytes(meta: GroupMeta) -> int:
    """tmpfs the parts need at most: two slabs of every subband (written slabs are deleted)."""
    return int(meta.n_rows / 2 * meta.n_chan * meta.n_pol * (8 + 1 + 4))


def choose_staging(settings: ConvertSettings, group: str, size: int, workspace: Path) -> tuple[Path, str]:
    """The group's folder for per-subband parts, and its kind: ``tmpfs_root/<group>`` ('tmpfs') or ``workspace``."""
    if settings.staging != "disk":
        settings.tmpfs_root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(settings.tmpfs_root).free
        if settings.staging == "tmpfs" or free >= settings.tmpfs_headroom * size:
            return settings.tmpfs_root / fs_safe(group), "tmpfs"
        log.info("tmpfs %s: %.1f GB free < %.1f GB needed, parts on disk", settings.tmpfs_root, free / 1e9, size / 1e9)
    return workspace, "disk"


def workers_are_local(client) -> bool:
    """True when every worker of a ``distributed.Client`` runs on this host (tmpfs parts are visible to it)."""
    import socket
    from urllib.parse import urlsplit

    names = {"127.0.0.1", "localhost", "::1", socket.gethostname()}
    with contextlib.suppress(OSError):
        names |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    workers = client.scheduler_info().get("workers", {})
    return all(urlsplit(address).hostname in names for address in workers)


def attempt_folders(settings: ConvertSettings, group: str, workspace: Path, attempt: str) -> tuple[Path, Path]:
    """One attempt's own folders: its per-subband parts in tmpfs and its build beside the final folder."""
    name = f"attempt-{path_component(attempt, what='attempt token')}"
    return settings.tmpfs_root / fs_safe(group) / name, Path(workspace) / name


def clean_staging(settings: ConvertSettings, group: str, workspace: Path, attempt: str) -> None:
    """Remove what one attempt at ``group`` left (a killed worker's leftovers), never another attempt's files.

    The group's folders themselves go only once no attempt uses them.
    """
    for folder in attempt_folders(settings, group, workspace, attempt):
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # the group's folder, unless another attempt is using it


def _same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _fsync_tree(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in [*names, None]:
            fd = os.open(os.path.join(folder, name) if name else folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def move_into_place(built: Path, final: Path, workspace: Path, *, fsync: bool = True, overwrite: bool = False) -> None:
    """Move a finished MS folder to ``final`` atomically; ``workspace`` is on the final file system.

    From another file system (tmpfs) the MS is first copied into ``workspace``
    (never into the final folder, so a killed worker leaves nothing there), then
    renamed. An existing ``final`` is a conflict unless ``overwrite``.
    """
    ready = stage_for_move(built, final, workspace, fsync=fsync, overwrite=overwrite)
    rename_into_place(ready, final, workspace, overwrite=overwrite)


def _refuse_existing(final: Path, overwrite: bool) -> None:
    if final.exists() and not overwrite:
        hint = "remove it, or convert with overwrite"
        raise ConflictError(final, "a Measurement Set of this name is already there", hint)


def stage_for_move(built: Path, final: Path, workspace: Path, *, fsync: bool = True, overwrite: bool = False) -> Path:
    """The slow half of ``move_into_place``: the MS copied onto the final file system (in ``workspace``), fsynced."""
    final.parent.mkdir(parents=True, exist_ok=True)
    workspace.mkdir(parents=True, exist_ok=True)
    _refuse_existing(final, overwrite)
    if _same_filesystem(built.parent, final.parent):
        ready = built
    else:
        ready = workspace / f"{final.name}.part"
        shutil.rmtree(ready, ignore_errors=True)
        shutil.copytree(built, ready)
    if fsync:
        _fsync_tree(ready)
    return ready


def rename_into_place(ready: Path, final: Path, workspace: Path, *, overwrite: bool = False) -> None:
    """The quick half of ``move_into_place``: rename (replacing ``final`` when ``overwrite``), fsync the folder."""
    _refuse_existing(final, overwrite)
    old = None
    if final.exists():
        old = workspace / f"{final.name}.old"
        os.rename(final, old)
    os.rename(ready, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- the conversion ----------------------------------------------------------------------------------


Route = Callable[[float, float, "float | None"], Path]
"""Where a group's MS goes, from its first and last integration (JD) and pointing declination (deg)."""


def convert_group(
    files: Sequence[Path],
    final_ms: Path | Route,
    *,
    group: str | None = None,
    settings: ConvertSettings | None = None,
    workspace: Path | None = None,
    client=None,
    progress: Callable[[int, int], None] | None = None,
    failed_ms: Path | None = None,
    overwrite: bool = False,
    attempt: str | None = None,
    publish_guard: Callable[[ConversionResult], AbstractContextManager] | None = None,
) -> ConversionResult:
    """Convert the subband ``files`` of one group into one Measurement Set.

    ``final_ms``: the MS path, or a function choosing it once the files' times are known
    (science or calibrator). ``workspace``: this group's scratch folder on the final file system
    (default ``<final folder>/.<name>.staging``); the MS is built in this attempt's subfolder of it
    and renamed into place; that subfolder is removed after (other attempts' are never touched).
    ``client``: a ``distributed.Client`` whose workers see the parts folder (None: threads in this
    process). ``progress(done, total)`` counts per-subband slabs. ``failed_ms``: where the partial
    MS goes if the conversion fails (None: discarded).
    ``attempt``: this attempt's token; its folders are named by it and only they are removed
    (default: a fresh token). ``publish_guard(result)``: a context manager the final rename runs
    inside (the streaming worker's check that it still holds its claim); raising ``ClaimLost``
    from it, or from ``progress``, abandons the attempt without publishing or quarantining.
    Raises ``InvalidInput`` naming the file at fault when the group cannot be converted.
    """
    settings = settings or ConvertSettings()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    plan = plan_group(files, settings.n_subbands)
    if plan.bad and settings.bad_file_policy == "fail":
        path, reason = sorted(plan.bad.items())[0]
        others = f" (and {len(plan.bad) - 1} more bad files)" if len(plan.bad) > 1 else ""
        raise InvalidInput(path, reason + others, "bad_file_policy is 'fail'; set it to 'flag' to convert without it")
    for path, reason in plan.bad.items():
        log.warning("flagging subband %s: %s: %s", plan.subband_of.get(path, "?"), path, reason)
    reference = plan.good[min(plan.good)]
    first, last = float(reference.unique_times_jd[0]), float(reference.unique_times_jd[-1])
    dec_deg = None if reference.pointing_dec_rad is None else float(np.degrees(reference.pointing_dec_rad))
    final_ms = Path(final_ms(first, last, dec_deg) if callable(final_ms) else final_ms)
    group = group or final_ms.name.removesuffix(".ms")
    workspace = Path(workspace) if workspace else final_ms.parent / f".{final_ms.name}.staging"
    meta = group_metadata(plan, group)
    timings["metadata_s"] = time.perf_counter() - started
    if client is not None and settings.staging != "disk" and not workers_are_local(client):
        log.info("Dask workers on other hosts cannot see this host's tmpfs: parts go to %s", workspace)
        settings = settings.model_copy(update={"staging": "disk"})
    # this attempt's own folders: a worker that lost its claim never deletes the files of the attempt that
    # took over, nor the other way round; a killed worker's folders go when its death is proven (recover_stuck)
    attempt = attempt or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    staging_root, kind = choose_staging(settings, group, _parts_bytes(meta), workspace)
    own = attempt_folders(settings, group, workspace, attempt)[1]
    parts_dir = staging_root / own.name  # own itself when the parts are on disk
    parts_dir.mkdir(parents=True)
    built = own / "build" / final_ms.name
    built.parent.mkdir(parents=True)
    writer = None
    try:
        writer = MsWriter(
            built,
            meta,
            n_subbands=plan.n_subbands,
            channels_per_tile=plan.n_channels,
            tile_rows=settings.tile_rows,
            weight_spectrum=settings.weight_spectrum,
        )
        writer.write_rows()
        written, flagged = _write_parts(writer, plan, meta, parts_dir, client, settings, progress)
        timings["subbands_s"] = time.perf_counter() - started - timings["metadata_s"]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        note = f"labpipe radio convert {stamp}: {len(written)} subbands, flagged {sorted(flagged)}"
        writer.finish(f"\n{note}; phased to the meridian at JD {meta.mid_jd:.6f}.")
        writer = None
        t_move = time.perf_counter()
        entry = meta.phase_center_catalog[next(iter(meta.phase_center_catalog))]
        result = ConversionResult(
            ms_path=str(final_ms),
            n_rows=meta.n_rows,
            n_channels=meta.n_chan,
            subbands_written=sorted(written),
            subbands_flagged=sorted(flagged),
            bad_files=dict(plan.bad),
            phase_ra_deg=float(np.degrees(entry["cat_lon"]) % 360),
            phase_dec_deg=float(np.degrees(entry["cat_lat"])),
            mid_time=_iso(meta.mid_jd),
            first_jd=first,
            last_jd=last,
            staging=kind,
            timings=timings,
        )
        ready = stage_for_move(built, final_ms, own, fsync=settings.fsync, overwrite=overwrite)
        result.seconds = time.perf_counter() - started
        with publish_guard(result) if publish_guard else contextlib.nullcontext():
            rename_into_place(ready, final_ms, own, overwrite=overwrite)
        timings["move_s"] = time.perf_counter() - t_move
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        if failed_ms is not None and built.exists() and not isinstance(exc, ClaimLost):
            with contextlib.suppress(Exception):
                move_into_place(built, failed_ms, own, fsync=False, overwrite=True)
        raise
    finally:
        for folder in (parts_dir, own):
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.parent.rmdir()  # the group's folder, unless another attempt is using it
    result.seconds = time.perf_counter() - started
    return result


def _write_parts(writer, plan: GroupPlan, meta: GroupMeta, parts_dir: Path, client, settings, progress):
    """Fan the per-subband slabs out, write each slab's rows once all its subbands are in; returns
    (written subbands, flagged subbands)."""
    scheduler = _PartScheduler(
        client, plan, meta.uvw_array[:, 2].copy(), _pol_order(meta.polarization_array), parts_dir,
        settings.max_in_flight,
    )  # fmt: skip
    bad: set[int] = set()
    done: dict[int, dict[int, object]] = {k: {} for k in range(len(scheduler.slabs))}
    next_slab, written_slabs = 0, []
    for count, (task, outcome) in enumerate(scheduler, start=1):
        if isinstance(outcome, InvalidInput):
            if settings.bad_file_policy == "fail":
                raise outcome
            plan.bad[plan.good[task.subband].path] = outcome.problem
            log.warning("flagging subband %s: %s", task.subband, outcome)
            bad.add(task.subband)
            scheduler.drop(task.subband)
        else:
            done[task.slab][task.subband] = outcome
        # write every slab, in order, whose subbands are all in (or bad)
        while next_slab < len(scheduler.slabs) and set(plan.good) - bad <= set(done[next_slab]):
            lo, hi = scheduler.slabs[next_slab]
            parts = {sb: p for sb, p in done.pop(next_slab).items() if sb not in bad}
            writer.write_rows_from_parts(lo, hi, parts, plan.channels)
            for p in parts.values():
                for suffix in (".c64", ".flags", ".weights"):
                    Path(p.prefix + suffix).unlink(missing_ok=True)
            written_slabs.append(next_slab)
            next_slab += 1
        if progress:
            progress(count, scheduler.total)
    if next_slab < len(scheduler.slabs):
        raise RuntimeError(f"slabs {next_slab}.. were never completed")  # a scheduler bug, not bad input
    for sb in sorted(bad):  # slabs written before the subband failed still hold its data
        writer.flag_subband(plan.channels(sb))
    written = sorted(set(plan.good) - bad)
    return written, sorted(set(plan.missing) | bad)


def _pol_order(pols) -> list[int]:
    from pyuvdata.utils.pol import determine_pol_order

    return [int(i) for i in determine_pol_order(pols, order="CASA")]


def _iso(jd: float) -> str:
    from astropy.time import Time

    return Time(jd, format="jd").utc.isot[:19]
