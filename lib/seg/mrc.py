"""MRC tomograms: validated before any GPU time is spent, read memory-mapped, written aligned.

Arrays are ZYX (the MRC data block order for map order 1,2,3). A tomogram is
checked header first (map ID, mode, dimensions, voxel size, axis order, space
group, data size against the file size), then its data slab by slab through a
memory map, so a 10 GB file is never loaded whole. Every problem names the file
and says what was expected.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.files import atomic_path
from labpipe.seg import require

HEADER_BYTES = 1024
# MRC modes a tomogram can have; complex modes (3, 4) are Fourier transforms and 101 is packed 4-bit
SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
SLAB_BYTES = 64 << 20
SCAN_BLOCK = 1 << 16  # voxels per float64 block of the moments (fits the CPU cache)


@dataclass
class TomogramInfo:
    """What ``validate_tomogram`` learned about a tomogram (sizes in voxels, lengths in Angstrom)."""

    path: str
    shape_zyx: tuple[int, int, int]
    voxel_size_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    start_xyz: tuple[int, int, int]
    mode: int
    dtype: str
    file_bytes: int
    extended_header_bytes: int
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    nonzero_box_zyx: list[list[int]] | None = None  # [lo, hi) per axis of the voxels that are not 0
    warnings: list[str] = field(default_factory=list)

    @property
    def voxels(self) -> int:
        return math.prod(self.shape_zyx)

    def as_json(self) -> dict:
        data = asdict(self)
        data["voxel_size_unit"] = "Angstrom"
        return data


def _mrcfile():
    return require("mrcfile")


def _invalid(path: Path, problem: str, hint: str = "") -> InvalidInput:
    return InvalidInput(path, problem, hint)


def read_header(path: Path, *, voxel_size: float | tuple[float, float, float] | None = None) -> TomogramInfo:
    """Check an MRC file's header and size; raise ``InvalidInput`` naming what is wrong.

    ``voxel_size`` (Angstrom, one value or ZYX) overrides a header that has none.
    """
    path = Path(path)
    if not path.is_file():
        raise _invalid(path, "no such file" if not path.exists() else "not a regular file", "give the path of a .mrc")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise _invalid(
            path,
            f"only {size} bytes, shorter than the {HEADER_BYTES}-byte MRC header",
            "the file is truncated or not an MRC file",
        )
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with _mrcfile().open(path, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header.copy()
                header_voxel = mrc.voxel_size.copy()
        except Exception as exc:  # mrcfile raises plain ValueError/OSError for unreadable headers
            raise _invalid(path, f"unreadable MRC header ({exc})", "is this an MRC/CCP4 map?") from exc
    messages = [str(w.message) for w in caught]
    if bytes(header.map) != b"MAP ":
        raise _invalid(
            path,
            "no 'MAP ' identifier at byte 208: not an MRC2014 file, or its header is corrupt",
            "re-export the tomogram as MRC2014 (IMOD, RELION, mrcfile all write it)",
        )
    if any("machine stamp" in m for m in messages):
        notes.append("unrecognised machine stamp; byte order assumed little-endian")
    mode = int(header.mode)
    if mode not in SUPPORTED_MODES:
        kind = {
            3: "complex int16 (a Fourier transform)",
            4: "complex float32 (a Fourier transform)",
            101: "packed 4-bit",
        }.get(mode, "unknown")
        raise _invalid(
            path,
            f"MRC mode {mode} ({kind}) is not a real-valued tomogram",
            f"expected one of modes {sorted(SUPPORTED_MODES)} ({', '.join(SUPPORTED_MODES.values())})",
        )
    nx, ny, nz = (int(header.nx), int(header.ny), int(header.nz))
    if min(nx, ny, nz) < 1:
        raise _invalid(path, f"dimensions nx={nx} ny={ny} nz={nz} in the header", "every dimension must be >= 1")
    if nz < 2:
        raise _invalid(path, f"a single 2-D image ({nx}x{ny}), not a tomogram", "expected a 3-D volume (nz >= 2)")
    ispg = int(header.ispg)
    if ispg >= 401:
        raise _invalid(
            path,
            f"space group {ispg} marks a stack of volumes, not one tomogram",
            "split the stack into one file per volume",
        )
    axes = (int(header.mapc), int(header.mapr), int(header.maps))
    if sorted(axes) != [1, 2, 3]:
        raise _invalid(
            path, f"axis order (mapc, mapr, maps) = {axes} is not a permutation of 1, 2, 3", "the header is corrupt"
        )
    if axes != (1, 2, 3):
        raise _invalid(
            path,
            f"axis order (mapc, mapr, maps) = {axes}: columns/rows/sections are not X/Y/Z",
            "reorder the volume to 1,2,3 first (e.g. IMOD `clip flipyz` or mrcfile), then segment it",
        )
    extended = int(header.nsymbt)
    if extended < 0:
        raise _invalid(path, f"negative extended header size {extended}", "the header is corrupt")
    itemsize = np.dtype(SUPPORTED_MODES[mode]).itemsize
    expected = HEADER_BYTES + extended + nx * ny * nz * itemsize
    if size < expected:
        raise _invalid(
            path,
            f"truncated: the header promises {nx}x{ny}x{nz} {SUPPORTED_MODES[mode]} voxels "
            f"({expected} bytes) but the file has {size} bytes ({expected - size} missing)",
            "copy the file again from its source",
        )
    if size > expected:
        raise _invalid(
            path,
            f"{size - expected} unexpected bytes after the data block of {nx}x{ny}x{nz} {SUPPORTED_MODES[mode]} voxels",
            "the header dimensions or mode do not match the data",
        )
    voxel = _voxel_size(path, header_voxel, voxel_size)
    origin = tuple(float(v) for v in (header.origin.x, header.origin.y, header.origin.z))
    if not all(math.isfinite(v) for v in origin):
        notes.append(f"origin {origin} is not finite; taken as 0")
        origin = (0.0, 0.0, 0.0)
    return TomogramInfo(
        path=str(path),
        shape_zyx=(nz, ny, nx),
        voxel_size_zyx=voxel,
        origin_xyz=origin,
        start_xyz=(int(header.nxstart), int(header.nystart), int(header.nzstart)),
        mode=mode,
        dtype=SUPPORTED_MODES[mode],
        file_bytes=size,
        extended_header_bytes=extended,
        warnings=notes,
    )


def _voxel_size(path: Path, header_voxel, override) -> tuple[float, float, float]:
    if override is not None:
        values = (float(override),) * 3 if np.isscalar(override) else tuple(float(v) for v in override)
        if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
            raise _invalid(path, f"voxel size override {override!r}", "expected one positive number or three (ZYX)")
        return values
    zyx = (float(header_voxel.z), float(header_voxel.y), float(header_voxel.x))
    if not all(math.isfinite(v) and v > 0 for v in zyx):
        raise _invalid(
            path,
            f"voxel size (z, y, x) = {zyx} Angstrom in the header (cella / mx,my,mz)",
            "set it in the header (IMOD `alterheader -del`) or pass --voxel-size in Angstrom",
        )
    return zyx


@contextlib.contextmanager
def open_volume(path: Path) -> Iterator[np.ndarray]:
    """The data block as a read-only memory-mapped ZYX array (valid inside the block only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _mrcfile().mmap(path, mode="r", permissive=True) as mrc:
            if mrc.data is None:
                raise _invalid(path, "the data block cannot be mapped", "run `labpipe seg validate` on it")
            yield mrc.data


def slabs(shape_zyx: tuple[int, int, int], itemsize: int, slab_bytes: int | None = None) -> Iterator[slice]:
    """Z ranges of at most ``slab_bytes`` (default ``SLAB_BYTES``) each, covering the volume."""
    slab_bytes = slab_bytes or SLAB_BYTES
    plane = shape_zyx[1] * shape_zyx[2] * itemsize
    step = max(1, slab_bytes // max(plane, 1))
    for z0 in range(0, shape_zyx[0], step):
        yield slice(z0, min(z0 + step, shape_zyx[0]))


class Moments:
    """Exact mean and standard deviation over chunks (Chan et al. parallel update, float64), and min/max."""

    def __init__(self) -> None:
        self.count, self.mean, self._m2 = 0, 0.0, 0.0
        self.low, self.high = math.inf, -math.inf

    def add(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk, dtype=np.float64)
        n, mean = chunk.size, float(chunk.mean())
        self.merge(n, mean, float(np.square(chunk - mean).sum()), float(chunk.min()), float(chunk.max()))

    def merge(self, n: int, mean: float, m2: float, low: float, high: float) -> None:
        """Take a chunk's count, mean, sum of squared deviations from its mean, minimum and maximum."""
        if n == 0:
            return
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self._m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.low, self.high = min(self.low, low), max(self.high, high)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / self.count) if self.count else 0.0


def _extent(flags: np.ndarray) -> list[int]:
    where = np.flatnonzero(flags)
    return [int(where[0]), int(where[-1]) + 1]


class VoxelScan:
    """Every voxel of a tomogram seen once, in runs of any order: finiteness, min/max/mean/std, nonzero box.

    ``add(start, values)`` takes a run of voxels in file order (C order, ZYX) beginning at flat voxel index
    ``start``; runs may come in any order as long as together they cover the volume once. Both the file
    validator (slab by slab) and the upload service (part by part, as the bytes arrive) scan through it.
    """

    def __init__(self, path: Path, shape_zyx: tuple[int, int, int]) -> None:
        self.path, self.shape_zyx = path, tuple(shape_zyx)
        self.moments = Moments()
        self.seen = 0
        self.box: list[list[int]] | None = None  # [lo, hi) per axis of the nonzero voxels seen
        self.problem: str | None = None  # the first run's non-finite voxels, described

    def add(self, start: int, values: np.ndarray) -> None:
        values = values.reshape(-1)
        n = values.size
        if n == 0 or self.problem:
            return
        self.seen += n
        zeros, block = 0, np.empty(min(n, SCAN_BLOCK), np.float64)
        for lo in range(0, n, SCAN_BLOCK):  # every statistic of a cache-sized block while it is in the cache
            chunk = values[lo : lo + SCAN_BLOCK]
            part = block[: chunk.size]
            np.copyto(part, chunk)
            total = float(np.add.reduce(part))
            if not math.isfinite(total):  # a NaN or an infinity is in the run
                self._non_finite(start, values)
                return
            mean = total / chunk.size
            low, high = float(part.min()), float(part.max())
            zeros += chunk.size - int(np.count_nonzero(chunk))
            np.subtract(part, mean, out=part)
            np.multiply(part, part, out=part)  # (numpy's sum, not BLAS: its threads cost more on small blocks)
            self.moments.merge(chunk.size, mean, float(np.add.reduce(part)), low, high)
        if zeros < n:
            self._nonzero(start, values != 0 if zeros else None, n)

    def _non_finite(self, start: int, values: np.ndarray) -> None:
        _, ny, nx = self.shape_zyx
        bad = ~np.isfinite(values)
        first = start + int(np.flatnonzero(bad)[0])
        z0, z1 = start // (ny * nx), (start + values.size - 1) // (ny * nx)
        z, rest = divmod(first, ny * nx)
        self.problem = (
            f"{int(bad.sum())} non-finite voxels (NaN or Inf) in sections {z0}-{z1}, "
            f"first at z,y,x = {z},{rest // nx},{rest % nx}"
        )

    def _nonzero(self, start: int, nonzero: np.ndarray | None, n: int) -> None:
        """Widen the box by the nonzero voxels of a run of ``n`` (``nonzero`` None: all of them); rows of X, and a
        run may start or end mid-row."""
        _, ny, nx = self.shape_zyx
        row0, lead = divmod(start, nx)
        rows = -(-(lead + n) // nx)
        if nonzero is None:  # every voxel of the run (the usual case): its rows, and its columns
            rows_zy = np.arange(row0, row0 + rows)
            hit_x = np.arange(nx) if rows > 1 and n >= nx else np.arange(lead, lead + n) % nx
            self._widen(rows_zy, np.sort(hit_x))
            return
        grid = np.zeros(rows * nx, bool)
        grid[lead : lead + nonzero.size] = nonzero
        grid = grid.reshape(rows, nx)
        hit_rows = np.flatnonzero(grid.any(axis=1))
        if hit_rows.size == 0:
            return
        self._widen(row0 + hit_rows, np.flatnonzero(grid.any(axis=0)))

    def _widen(self, rows_zy: np.ndarray, hit_x: np.ndarray) -> None:
        """Widen the box by nonzero voxels in rows ``rows_zy`` (z * ny + y, ascending) at columns ``hit_x``."""
        ny = self.shape_zyx[1]
        ys = rows_zy % ny
        found = [
            [int(rows_zy[0] // ny), int(rows_zy[-1] // ny) + 1],
            [int(ys.min()), int(ys.max()) + 1],
            [int(hit_x[0]), int(hit_x[-1]) + 1],
        ]
        if self.box is None:
            self.box = found
        else:
            self.box = [[min(a[0], b[0]), max(a[1], b[1])] for a, b in zip(self.box, found, strict=True)]

    def finish(self, info: TomogramInfo) -> TomogramInfo:
        """``info`` (from ``read_header``) completed with the statistics; ``InvalidInput`` for non-finite voxels."""
        if self.problem:
            raise _invalid(self.path, self.problem, "the reconstruction failed there; fix or crop the volume")
        if self.seen != math.prod(self.shape_zyx):
            raise ValueError(f"{self.path}: {self.seen} voxels scanned of {math.prod(self.shape_zyx)}")
        m = self.moments
        info.min, info.max, info.mean, info.std = m.low, m.high, m.mean, m.std
        # nnU-Net crops to this box before normalising; computed here so segmentation needs no second pass
        info.nonzero_box_zyx = self.box
        if info.std == 0:
            info.warnings.append("constant volume: every voxel has the same value")
        return info


def data_dtype(path: Path) -> np.dtype:
    """The dtype of an MRC file's voxels with the byte order its header declares."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _mrcfile().open(path, mode="r", permissive=True, header_only=True) as mrc:
            return np.dtype(_mrcfile().utils.data_dtype_from_header(mrc.header))


class StreamValidator:
    """``validate_tomogram`` over a file's bytes as they arrive in order (an upload), without reading it again.

    ``feed(offset, data)`` takes consecutive byte ranges of the file from offset 0; the header is checked once
    the file's first ``HEADER_BYTES`` are on disk at ``path`` (``read_header``: the file must already have its
    full size, e.g. a sparse file the ranges are written into). ``finish()`` is ``validate_tomogram``'s result.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.info: TomogramInfo | None = None
        self.error: InvalidInput | None = None
        self._scan: VoxelScan | None = None
        self._carry = b""

    def feed(self, offset: int, data) -> None:
        if offset != self.offset:
            raise ValueError(f"{self.path}: bytes from {offset} fed, {self.offset} expected")
        self.offset += len(data)
        if self.error is not None:
            return
        if self.info is None:
            try:
                self.info = read_header(self.path)
                dtype = data_dtype(self.path)
            except InvalidInput as exc:
                self.error = exc
                return
            self._dtype = dtype if dtype.isnative else dtype.newbyteorder("=")
            self._swap = not dtype.isnative
            self._start = HEADER_BYTES + self.info.extended_header_bytes
            self._voxel = 0
            self._scan = VoxelScan(self.path, self.info.shape_zyx)
        view = memoryview(data)
        skip = max(0, self._start - offset)
        if skip >= len(view):
            return
        view = view[skip:]
        itemsize = self._dtype.itemsize
        if self._carry:
            need = itemsize - len(self._carry)
            self._carry += bytes(view[:need])
            view = view[need:]
            if len(self._carry) == itemsize:
                self._add(np.frombuffer(self._carry, self._dtype))
                self._carry = b""
        whole = len(view) - len(view) % itemsize
        if whole:
            self._add(np.frombuffer(view[:whole], self._dtype))
        self._carry += bytes(view[whole:])

    def _add(self, values: np.ndarray) -> None:
        if self._swap:
            values = values.byteswap()
        self._scan.add(self._voxel, values)
        self._voxel += values.size

    def finish(self) -> TomogramInfo:
        if self.error is not None:
            raise self.error
        if self.info is None or self.offset != self.info.file_bytes:
            raise ValueError(f"{self.path}: {self.offset} bytes fed, the file has more")
        return self._scan.finish(self.info)


def validate_tomogram(
    path: Path,
    *,
    voxel_size: float | tuple[float, float, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TomogramInfo:
    """Header checks, then every voxel read once (memory-mapped): finiteness, min/max/mean/std, nonzero box."""
    info = read_header(path, voxel_size=voxel_size)
    nz, ny, nx = info.shape_zyx
    scan = VoxelScan(Path(path), info.shape_zyx)
    with open_volume(path) as data:
        for zs in slabs(info.shape_zyx, np.dtype(info.dtype).itemsize):
            scan.add(zs.start * ny * nx, np.ascontiguousarray(data[zs]))
            if scan.problem:
                break
            if progress:
                progress(zs.stop, nz)
    return scan.finish(info)


def write_mrc(
    path: Path,
    data: np.ndarray,
    *,
    voxel_size_zyx: tuple[float, float, float],
    origin_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0),
    start_xyz: tuple[int, int, int] = (0, 0, 0),
    labels: list[str] | None = None,
) -> Path:
    """Write a ZYX array as MRC2014 with the given voxel size and origin, atomically.

    Large arrays (memory maps) are copied slab by slab into a memory-mapped file.
    """
    mrcfile = _mrcfile()
    path = Path(path)
    dtype = np.dtype(data.dtype)
    with atomic_path(path) as tmp:
        with mrcfile.new_mmap(tmp, shape=data.shape, mrc_mode=mrcfile.utils.mode_from_dtype(dtype)) as mrc:
            for zs in slabs(data.shape, dtype.itemsize):
                mrc.data[zs] = data[zs]
            mrc.voxel_size = tuple(reversed(voxel_size_zyx))  # mrcfile takes x, y, z
            mrc.header.origin = tuple(origin_xyz)
            mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = start_xyz
            mrc.header.ispg = 1  # a single volume
            mrc.update_header_stats()
            for text in (labels or [])[:10]:
                mrc.add_label(text[:80])
            mrc.flush()
        os.chmod(tmp, 0o644)
    return path
