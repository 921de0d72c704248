"""What a two-photon TIFF is: frames, size, and ScanImage's metadata (frame rate, zoom, planes, channels).

ScanImage (2016 and later) writes its non-varying settings as MATLAB assignments
(``SI.hRoiManager.scanFrameRate = 30``) in the Software tag of every page (and in a
BigTIFF header block), and per-frame data (frame number, timestamp) in each page's
ImageDescription. Where a TIFF has no such header, the frame rate comes from the
settings and the record says so (``metadata_source``).

Every page's data must lie inside the file: a TIFF truncated by an interrupted copy
is refused here, naming the file and the first page that is cut, before suite2p
spends an hour on it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from labpipe.errors import InvalidInput

REEXPORT = "copy the file again from the acquisition PC (the share holds a truncated or damaged copy)"


@dataclass(frozen=True)
class ScanInfo:
    """A two-photon recording as its TIFF describes it."""

    frames: int  # pages per plane and channel (time points)
    height: int
    width: int
    dtype: str
    frame_rate: float  # Hz per plane
    zoom: float | None
    planes: int
    channels: int
    scanimage_version: str  # "" when the TIFF has no ScanImage header
    metadata_source: str  # "scanimage" or "settings"

    def row(self) -> dict:
        return {
            k: v if v is not None else None
            for k, v in asdict(self).items()
            if k not in ("dtype",)  # dtype is checked, not stored
        }


def _as_int(value, default: int) -> int:
    if isinstance(value, list | tuple):
        return len(value) if value else default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def scanimage_frame_data(path: Path) -> dict:
    """ScanImage's ``SI.*`` settings of ``path`` as a flat dict (empty if it has none)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.is_scanimage:
            return {}
        meta = tif.scanimage_metadata or {}
        frame_data = meta.get("FrameData")
        if not frame_data:
            software = tif.pages.first.software
            frame_data = tifffile.matlabstr2py(software) if software.startswith("SI.") else {}
    return dict(frame_data)


def check_pages(path: Path) -> tuple[int, tuple[int, int], str]:
    """(pages, (height, width), dtype) of a TIFF whose every page lies inside the file; else ``InvalidInput``."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise InvalidInput(path, "file not found", "check the share root and the task's file name")
    size = os.path.getsize(path)
    count, shape, dtype = 0, None, None
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise InvalidInput(path, f"not a readable TIFF: {exc}", REEXPORT) from exc
    with tif:
        pages = tif.pages
        pages.useframes = True  # no full TiffPage per frame: fast and small on 20,000 pages
        index = 0
        while True:
            try:
                page = pages.get(index) if index < len(pages) else None
            except Exception as exc:
                raise InvalidInput(path, f"truncated TIFF: page {index + 1} cannot be read ({exc})", REEXPORT) from exc
            if page is None:
                break
            end = max((o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)), default=0)
            if end > size or not page.dataoffsets:
                raise InvalidInput(
                    path, f"truncated TIFF: page {index + 1} ends at byte {end}, the file has {size}", REEXPORT
                )
            if shape is None:
                shape, dtype = page.shape, str(page.dtype)
            index += 1
        count = index
        if tif.filehandle.size < size:
            raise InvalidInput(path, "file changed while it was read", "retry when the copy has finished")
        last_ifd_cut = _ifd_chain_is_cut(tif)
    if last_ifd_cut:
        raise InvalidInput(path, f"truncated TIFF: page {count + 1} cannot be read (its header is cut)", REEXPORT)
    if shape is None or len(shape) != 2:
        raise InvalidInput(path, f"expected single-channel 2-D pages, got pages of shape {shape}")
    return count, (int(shape[0]), int(shape[1])), dtype


def _ifd_chain_is_cut(tif) -> bool:
    """True if the last page read points to a next page header beyond the file (tifffile stops there silently)."""
    import struct

    handle = tif.filehandle
    last = tif.pages[-1] if len(tif.pages) else None
    if last is None:
        return False
    offset_size = 8 if tif.is_bigtiff else 4
    tag_count_size, tag_size = (8, 20) if tif.is_bigtiff else (2, 12)
    handle.seek(last.offset)
    raw = handle.read(tag_count_size)
    if len(raw) < tag_count_size:
        return True
    tags = struct.unpack("<Q" if tif.is_bigtiff else "<H", raw)[0]
    handle.seek(last.offset + tag_count_size + tags * tag_size)
    raw = handle.read(offset_size)
    if len(raw) < offset_size:
        return True
    following = struct.unpack("<Q" if tif.is_bigtiff else "<I", raw)[0]
    return following >= handle.size


def read_scan_info(path: Path, frame_rate: float | None = None) -> ScanInfo:
    """Frames, size and ScanImage metadata of ``path``; ``frame_rate`` is used when the TIFF has none."""
    path = Path(path)
    pages, (height, width), dtype = check_pages(path)
    si = scanimage_frame_data(path)
    if si:
        rate = float(si.get("SI.hRoiManager.scanVolumeRate") or si.get("SI.hRoiManager.scanFrameRate") or 0)
        zoom = si.get("SI.hRoiManager.scanZoomFactor")
        fastz = bool(si.get("SI.hFastZ.enable", False)) or bool(si.get("SI.hStackManager.enable", False))
        planes = _as_int(si.get("SI.hStackManager.actualNumSlices", si.get("SI.hStackManager.numSlices")), 1)
        planes = planes if fastz else 1
        channels = _as_int(si.get("SI.hChannels.channelSave"), 1)
        version = f"{si.get('SI.VERSION_MAJOR', '')}.{si.get('SI.VERSION_MINOR', '')}".strip(".")
        if rate <= 0:
            raise InvalidInput(path, "ScanImage header has no frame rate (SI.hRoiManager.scanFrameRate)")
        source = "scanimage"
    else:
        if not frame_rate:
            raise InvalidInput(
                path, "no ScanImage header and no frame rate configured", "set frame_rate in the imaging settings"
            )
        rate, zoom, planes, channels, version, source = frame_rate, None, 1, 1, "", "settings"
    if pages % (planes * channels):
        raise InvalidInput(
            path, f"{pages} pages are not a whole number of volumes ({planes} planes x {channels} channels)", REEXPORT
        )
    return ScanInfo(
        frames=pages // (planes * channels),
        height=height,
        width=width,
        dtype=dtype,
        frame_rate=rate,
        zoom=float(zoom) if zoom is not None else None,
        planes=planes,
        channels=channels,
        scanimage_version=version,
        metadata_source=source,
    )
