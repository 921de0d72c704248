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
        m2 = float(np.square(chunk - mean).sum())
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self._m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.low, self.high = min(self.low, float(chunk.min())), max(self.high, float(chunk.max()))

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / self.count) if self.count else 0.0


def _extent(flags: np.ndarray) -> list[int]:
    where = np.flatnonzero(flags)
    return [int(where[0]), int(where[-1]) + 1]


def validate_tomogram(
    path: Path,
    *,
    voxel_size: float | tuple[float, float, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TomogramInfo:
    """Header checks, then every voxel read once (memory-mapped): finiteness, min/max/mean/std, nonzero box."""
    info = read_header(path, voxel_size=voxel_size)
    nz, ny, nx = info.shape_zyx
    moments = Moments()
    any_z, any_y, any_x = np.zeros(nz, bool), np.zeros(ny, bool), np.zeros(nx, bool)
    with open_volume(path) as data:
        for zs in slabs(info.shape_zyx, np.dtype(info.dtype).itemsize):
            slab = np.asarray(data[zs], dtype=np.float64)
            finite = np.isfinite(slab)
            if not finite.all():
                z, y, x = (int(v) for v in np.argwhere(~finite)[0])
                raise _invalid(
                    path,
                    f"{int((~finite).sum())} non-finite voxels (NaN or Inf) in sections "
                    f"{zs.start}-{zs.stop - 1}, first at z,y,x = {z + zs.start},{y},{x}",
                    "the reconstruction failed there; fix or crop the volume",
                )
            moments.add(slab)
            nonzero = slab != 0
            any_z[zs] = nonzero.any(axis=(1, 2))
            any_y |= nonzero.any(axis=(0, 2))
            any_x |= nonzero.any(axis=(0, 1))
            if progress:
                progress(zs.stop, nz)
    info.min, info.max, info.mean, info.std = moments.low, moments.high, moments.mean, moments.std
    # nnU-Net crops to this box before normalising; computed here so segmentation needs no second pass
    info.nonzero_box_zyx = [_extent(any_z), _extent(any_y), _extent(any_x)] if any_z.any() else None
    if info.std == 0:
        info.warnings.append("constant volume: every voxel has the same value")
    return info


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
