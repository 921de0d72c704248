"""A group's metadata, phased to the meridian, computed with pyuvdata's own functions (no UVData object).

``UVData.from_file(..., read_data=False)`` would do, but it JIT-compiles
pyuvdata's numba baseline helpers on first use (3-4 s of CPU in every fresh
worker process) and builds far more than a conversion needs. Here the header
arrays come from pyuvdata's ``FastUVH5Meta`` and ``Telescope.from_hdf5``, and
the apparent coordinates, frame position angle and UVWs from the very
functions ``UVData.phase`` calls (``calc_app_coords``, ``calc_frame_pos_angle``,
``calc_uvw``), with the same arguments, so the UVWs are pyuvdata's (the tests
check they agree with ``UVData.phase`` to well under 1 mm).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class GroupMeta:
    """What the Measurement Set needs besides the visibilities (pyuvdata conventions: uvw = ant2 - ant1)."""

    telescope: object  # pyuvdata Telescope
    time_array: np.ndarray  # (blts,) JD
    lst_array: np.ndarray
    integration_time: np.ndarray
    ant_1_array: np.ndarray
    ant_2_array: np.ndarray
    uvw_array: np.ndarray  # (blts, 3) m, phased
    freq_array: np.ndarray  # (chans,) ascending
    channel_width: np.ndarray
    polarization_array: np.ndarray
    phase_center_catalog: dict
    extra_keywords: dict = field(default_factory=dict)
    history: str = ""
    vis_units: str = "uncalib"

    @property
    def n_rows(self) -> int:
        return len(self.time_array)

    @property
    def n_chan(self) -> int:
        return len(self.freq_array)

    @property
    def n_pol(self) -> int:
        return len(self.polarization_array)

    @property
    def mid_jd(self) -> float:
        return float(np.mean(np.unique(self.time_array)))


def read_group_meta(path: Path, band_hz: np.ndarray, channel_width_hz: float) -> GroupMeta:
    """The unphased metadata of one subband file, widened to the group's whole band."""
    import warnings

    from pyuvdata import Telescope
    from pyuvdata.uvdata.uvh5 import FastUVH5Meta

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown telescope name
        meta = FastUVH5Meta(path)
        telescope = Telescope.from_hdf5(path, run_check=False)
        return GroupMeta(
            telescope=telescope,
            time_array=np.asarray(meta.time_array, float),
            lst_array=np.asarray(meta.lst_array, float),
            integration_time=np.asarray(meta.integration_time, float),
            ant_1_array=np.asarray(meta.ant_1_array),
            ant_2_array=np.asarray(meta.ant_2_array),
            uvw_array=np.asarray(meta.uvw_array, float),
            freq_array=np.asarray(band_hz, float),
            channel_width=np.full(len(band_hz), channel_width_hz),
            polarization_array=np.asarray(meta.polarization_array),
            phase_center_catalog=dict(meta.phase_center_catalog),
            extra_keywords=dict(meta.extra_keywords),
            history=str(meta.history),
            vis_units=str(meta.vis_units),
        )


def phase_to(meta: GroupMeta, ra_rad: float, dec_rad: float, name: str) -> GroupMeta:
    """Phase unprojected metadata to ICRS (ra, dec) exactly as ``UVData.phase(lon, lat, epoch="J2000")``."""
    from pyuvdata.utils import phasing

    location = meta.telescope.location
    unique, index = np.unique(meta.time_array, return_inverse=True)
    lst = np.array([meta.lst_array[index == k][0] for k in range(len(unique))])
    app_ra, app_dec = phasing.calc_app_coords(
        lon_coord=ra_rad,
        lat_coord=dec_rad,
        coord_frame="icrs",
        coord_epoch=2000.0,
        coord_type="sidereal",
        time_array=unique,
        lst_array=lst,
        telescope_loc=location,
    )
    frame_pa = phasing.calc_frame_pos_angle(
        time_array=unique, app_ra=app_ra, app_dec=app_dec, telescope_loc=location, ref_frame="icrs", ref_epoch="J2000"
    )
    meta.uvw_array = phasing.calc_uvw(
        app_ra=app_ra[index],
        app_dec=app_dec[index],
        frame_pa=frame_pa[index],
        lst_array=meta.lst_array,
        use_ant_pos=True,
        antenna_positions=meta.telescope.antenna_positions,
        antenna_numbers=meta.telescope.antenna_numbers,
        ant_1_array=meta.ant_1_array,
        ant_2_array=meta.ant_2_array,
        telescope_lat=location.lat.rad,
        telescope_lon=location.lon.rad,
    )
    cat_id = max(meta.phase_center_catalog, default=-1) + 1  # as UVData.phase numbers a new centre
    meta.phase_center_catalog = {
        cat_id: dict(
            cat_name=name,
            cat_type="sidereal",
            cat_lon=float(ra_rad),
            cat_lat=float(dec_rad),
            cat_frame="icrs",
            cat_epoch=2000.0,
            cat_times=None,
            cat_pm_ra=None,
            cat_pm_dec=None,
            cat_vrad=None,
            cat_dist=None,
            info_source="user",
        )
    }
    return meta
