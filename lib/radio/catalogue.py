"""The radio sky as labpipe learns it: images, their sources, the master source list, light curves, variability.

Tables (schema ``<prefix>_radiosci``, declared per database)::

    Image ──< Detection >── MasterSource ──< ForcedFlux >── Image
                   └──────── Candidate          └── Variability (one row per master source)

Identity rules (``crossmatch``), run for one image at a time under a server lock and in one
transaction, so two images catalogued at once cannot give one source two identities:

1. Each detection is matched to the master list: to the nearest master source within
   ``match_radius_beams`` synthesised-beam FWHMs, one to one (pairs taken closest first; a second
   detection of an already matched source in the same image is *ambiguous* and recorded without
   an identity). A matched detection moves its source's position (weighted mean, weights
   1/position error^2) and counts as a detection of it.
2. A detection matching no master source is matched the same way to the *candidates* (sources
   seen before but not yet promoted), or becomes a new candidate.
3. A candidate seen in ``promote_after`` different images is promoted: it gets the next free
   ``source_id`` (ids are never reused or renumbered), and its detections get that identity.
4. Every detection, and every master source at promotion, is matched to the reference catalogue
   (the nearest within ``reference_radius_arcsec``; NVSS by default): name, separation, flux.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from labpipe.db.connect import LabDatabase, datajoint_module
from labpipe.errors import InvalidInput
from pydantic import BaseModel, Field

LIFECYCLE = "radiosci"
STATUSES = ("found", "catalogued", "measured")


class CatalogueSettings(BaseModel):
    """How detections become sources of the master list."""

    match_radius_beams: float = Field(0.5, description="A detection this close (beam FWHMs) to a source is it.")
    promote_after: int = Field(3, description="Detections (in different images) before a new source is promoted.")
    reference_radius_arcsec: float = Field(20.0, description="Match radius to the reference catalogue (NVSS).")


def _build(schema) -> SimpleNamespace:
    dj = datajoint_module()

    @schema
    class Image(dj.Manual):
        """An image the science steps have seen. Attributes: prefix of its FITS files, time, centre, beam, status."""

        definition = """
        image_id : varchar(64)             # the group id (or another unique image name)
        ---
        prefix : varchar(1023)             # <prefix>.{image,pb,residual,image.pbcor}.fits
        catalogue = '' : varchar(1023)     # PyBDSF source list (FITS)
        mjd : float64                      # observation time (MJD-OBS)
        ra_deg : float64                   # phase centre
        dec_deg : float64
        freq_hz : float64
        bmaj_deg : float64                 # restoring beam
        bmin_deg : float64
        bpa_deg : float64
        rms_jy : float32                   # PyBDSF's median rms
        n_detections : int32
        status : enum('found', 'catalogued', 'measured')
        recorded : datetime
        """

    @schema
    class MasterSource(dj.Manual):
        """A source of the master list: a stable id, its mean position, how often seen, its reference match."""

        definition = """
        source_id : int32                  # never reused
        ---
        ra_deg : float64                   # weighted mean of its detections
        dec_deg : float64
        pos_weight : float64               # sum of 1 / position error^2 (deg^-2)
        n_detections : int32
        first_mjd : float64
        last_mjd : float64
        ref_name = '' : varchar(64)
        ref_sep_arcsec = null : float32
        ref_flux_jy = null : float32
        promoted : datetime
        promoted_in = '' : varchar(64)     # the image whose cross-match promoted it
        """

    @schema
    class Candidate(dj.Manual):
        """A source seen in fewer than ``promote_after`` images so far."""

        definition = """
        candidate_id : int32
        ---
        ra_deg : float64
        dec_deg : float64
        pos_weight : float64
        n_detections : int32
        first_mjd : float64
        last_mjd : float64
        """

    @schema
    class Detection(dj.Manual):
        """A source PyBDSF found in an image (primary-beam-corrected fluxes) and the identity it was given."""

        definition = """
        -> Image
        detection : int32                  # PyBDSF Source_id
        ---
        ra_deg : float64
        dec_deg : float64
        ra_err_deg : float32               # on the sky
        dec_err_deg : float32
        peak_jy : float32                  # Jy/beam
        peak_err_jy : float32
        total_jy : float32
        total_err_jy : float32
        maj_deg : float32                  # fitted FWHM, beam included
        min_deg : float32
        pa_deg : float32
        maj_err_deg : float32
        min_err_deg : float32
        pa_err_deg : float32
        local_rms_jy : float32
        pb : float32
        code : char(1)                     # S, M or C (PyBDSF)
        source_id = null : int32           # master identity
        candidate_id = null : int32
        ambiguous = 0 : bool               # a second detection of a source already matched in this image
        ref_name = '' : varchar(64)
        ref_sep_arcsec = null : float32
        ref_flux_jy = null : float32
        """

    @schema
    class ForcedFlux(dj.Manual):
        """A light-curve point: a master source measured at its position in one image."""

        definition = """
        -> MasterSource
        -> Image
        ---
        mjd : float64
        flux_jy : float32                  # primary-beam corrected
        flux_err_jy : float32
        pb : float32
        local_rms_jy : float32             # image noise around the source, before the beam correction
        detected : bool                    # PyBDSF found it in this image
        """

    @schema
    class Variability(dj.Manual):
        """Variability metrics of a master source over its light curve, and whether it is flagged."""

        definition = """
        -> MasterSource
        ---
        n_epochs : int32
        mean_flux_jy : float32
        median_flux_jy : float32
        v_index : float32                  # modulation index: std / mean
        eta : float32                      # weighted reduced chi-square about the weighted mean
        eta_threshold : float32
        is_variable : bool
        ese_candidate : bool
        ese_start_mjd = null : float64
        ese_end_mjd = null : float64
        ese_depth = null : float32         # fractional depth below the median
        ese_sigma = null : float32         # deepest epoch, sigmas below the median
        lightcurve : <npy@blobs>           # (3, n): mjd, flux, error, as assessed
        updated : datetime
        """

    return SimpleNamespace(
        schema=schema, Image=Image, MasterSource=MasterSource, Candidate=Candidate, Detection=Detection,
        ForcedFlux=ForcedFlux, Variability=Variability,
    )  # fmt: skip


def tables(db: LabDatabase) -> SimpleNamespace:
    """The radio science tables on ``db`` (declared on first use)."""
    return db.tables(LIFECYCLE, _build)


def _now() -> dt.datetime:
    return dt.datetime.now().replace(microsecond=0)


# ----------------------------------------------------------------------------------------- reference


@dataclass
class Reference:
    """A reference catalogue (NVSS-like) ready for matching."""

    names: np.ndarray
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    flux_jy: np.ndarray

    @classmethod
    def from_catalog(cls, catalog) -> Reference:
        """From a ``skymodel.Catalog`` (``skymodel.read_catalog``)."""
        return cls(np.asarray(catalog.name), np.asarray(catalog.ra_deg), np.asarray(catalog.dec_deg),
                   np.asarray(catalog.flux_jy))  # fmt: skip

    def match(self, ra_deg, dec_deg, radius_arcsec: float) -> list[tuple[str, float, float] | None]:
        """Per position: (name, separation arcsec, flux Jy) of the nearest reference source within the radius."""
        ra_deg, dec_deg = np.atleast_1d(ra_deg), np.atleast_1d(dec_deg)
        if len(self.ra_deg) == 0 or len(ra_deg) == 0:
            return [None] * len(ra_deg)
        index, sep = _nearest(ra_deg, dec_deg, self.ra_deg, self.dec_deg)
        return [
            (str(self.names[i]), float(s), float(self.flux_jy[i])) if s <= radius_arcsec else None
            for i, s in zip(index, sep, strict=True)
        ]


def _coords(ra_deg, dec_deg):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    return SkyCoord(ra=np.asarray(ra_deg, float) * u.deg, dec=np.asarray(dec_deg, float) * u.deg, frame="icrs")


def _nearest(ra1, dec1, ra2, dec2) -> tuple[np.ndarray, np.ndarray]:
    """For each of the first positions: index of and separation (arcsec) to the nearest of the second."""
    index, sep, _ = _coords(ra1, dec1).match_to_catalog_sky(_coords(ra2, dec2))
    return np.asarray(index), sep.arcsec


def _pairs_within(ra1, dec1, ra2, dec2, radius_arcsec: float) -> list[tuple[int, int, float]]:
    """(i, j, separation arcsec) for every pair within the radius, closest first."""
    import astropy.units as u

    if len(ra1) == 0 or len(ra2) == 0:
        return []
    # returns (index into the argument, index into the coordinates searched), separation, distance
    i, j, sep, _ = _coords(ra2, dec2).search_around_sky(_coords(ra1, dec1), radius_arcsec * u.arcsec)
    return sorted(zip(i.tolist(), j.tolist(), sep.arcsec.tolist(), strict=True), key=lambda p: p[2])


def _one_to_one(pairs: list[tuple[int, int, float]]) -> dict[int, int]:
    """Greedy closest-first assignment: detection index -> list index, each used once."""
    taken_a: set[int] = set()
    taken_b: set[int] = set()
    out = {}
    for a, b, _ in pairs:
        if a in taken_a or b in taken_b:
            continue
        out[a] = b
        taken_a.add(a)
        taken_b.add(b)
    return out


def _moved(ra, dec, weight, ra_new, dec_new, w_new) -> tuple[float, float, float]:
    """Weighted mean position on the tangent plane (RA wraps), and the new total weight."""
    total = weight + w_new
    dra = ((ra_new - ra + 180.0) % 360.0) - 180.0
    ra_out = (ra + dra * w_new / total) % 360.0
    dec_out = dec + (dec_new - dec) * w_new / total
    return float(ra_out), float(dec_out), float(total)


# ----------------------------------------------------------------------------------------- images


def image_record(image_id: str, prefix: Path, catalogue: Path | None, rms_jy: float, n_detections: int) -> dict:
    """An ``Image`` row from the header of ``<prefix>.image.fits`` (time, centre, frequency, beam)."""
    from astropy.io import fits

    path = Path(f"{prefix}.image.fits")
    try:
        header = fits.getheader(path)
        return dict(
            image_id=image_id, prefix=str(prefix), catalogue=str(catalogue or ""), mjd=float(header["MJD-OBS"]),
            ra_deg=float(header["CRVAL1"]) % 360, dec_deg=float(header["CRVAL2"]),
            freq_hz=float(header.get("CRVAL3", header.get("RESTFRQ", 0.0))), bmaj_deg=float(header["BMAJ"]),
            bmin_deg=float(header["BMIN"]), bpa_deg=float(header["BPA"]),
            rms_jy=float(rms_jy) if math.isfinite(rms_jy) else 0.0, n_detections=int(n_detections),
            status="found", recorded=_now(),
        )  # fmt: skip
    except (OSError, KeyError) as exc:
        raise InvalidInput(
            path, f"not an image labpipe can catalogue ({exc})", "it needs MJD-OBS, BMAJ/BMIN/BPA"
        ) from exc


def record_detections(db: LabDatabase, row: dict, detections: list, reference: Reference | None,
                      settings: CatalogueSettings) -> None:  # fmt: skip
    """Insert an image and its detections (with their reference matches) in one transaction. Idempotent."""
    t = tables(db)
    if t.Image & {"image_id": row["image_id"]}:
        return
    refs = (
        reference.match([d.ra_deg for d in detections], [d.dec_deg for d in detections],
                        settings.reference_radius_arcsec)
        if reference is not None else [None] * len(detections)
    )  # fmt: skip
    rows = []
    for d, ref in zip(detections, refs, strict=True):
        r = {k: v for k, v in vars(d).items() if k != "index"}
        r.update(image_id=row["image_id"], detection=int(d.index), ref_name="", ref_sep_arcsec=None, ref_flux_jy=None)
        if ref is not None:
            r.update(ref_name=ref[0][:64], ref_sep_arcsec=ref[1], ref_flux_jy=ref[2])
        rows.append({k: (float(v) if isinstance(v, np.floating) else v) for k, v in r.items()})
    with t.schema.connection.transaction:
        t.Image.insert1(row)
        if rows:
            t.Detection.insert(rows)


# ----------------------------------------------------------------------------------------- cross-match


@dataclass
class CrossmatchReport:
    """What cross-matching one image did."""

    image_id: str
    matched: list[int] = field(default_factory=list)  # master source ids detected again
    new_candidates: int = 0
    candidates_seen: int = 0  # detections that matched a candidate
    promoted: list[int] = field(default_factory=list)  # new master source ids
    ambiguous: int = 0
    already_done: bool = False


def crossmatch(
    db: LabDatabase, image_id: str, settings: CatalogueSettings, reference: Reference | None = None
) -> CrossmatchReport:
    """Give the detections of one image their identities (see the module doc). Idempotent per image."""
    t = tables(db)
    report = CrossmatchReport(image_id)
    with db.server_lock(f"{db.schema_name(LIFECYCLE)} crossmatch"):
        image = (t.Image & {"image_id": image_id}).to_dicts()
        if not image:
            raise InvalidInput(image_id, "image not recorded", "record its detections first")
        image = image[0]
        if image["status"] != "found":
            report.already_done = True
            return report
        radius = settings.match_radius_beams * image["bmaj_deg"] * 3600.0
        detections = (t.Detection & {"image_id": image_id}).to_dicts(order_by="detection")
        with t.schema.connection.transaction:
            left = _match_master(t, image, detections, radius, report)
            _match_candidates(t, image, left, radius, report)
            report.promoted = _promote(t, settings, reference, image_id)
            t.Image.update1({"image_id": image_id, "status": "catalogued"})
    return report


def _weight(d: dict) -> float:
    err = max(float(d["ra_err_deg"]), float(d["dec_err_deg"]), 1e-7)
    return 1.0 / err**2


def _match_master(t, image: dict, detections: list[dict], radius: float, report: CrossmatchReport) -> list[dict]:
    """Match detections to master sources; returns the detections left over."""
    masters = t.MasterSource.to_dicts(order_by="source_id")
    pairs = _pairs_within([d["ra_deg"] for d in detections], [d["dec_deg"] for d in detections],
                          [m["ra_deg"] for m in masters], [m["dec_deg"] for m in masters], radius)  # fmt: skip
    assigned = _one_to_one(pairs)
    near_a_master = {a for a, _, _ in pairs}
    left = []
    for a, d in enumerate(detections):
        key = {"image_id": d["image_id"], "detection": d["detection"]}
        if a in assigned:
            m = masters[assigned[a]]
            ra, dec, weight = _moved(m["ra_deg"], m["dec_deg"], m["pos_weight"], d["ra_deg"], d["dec_deg"], _weight(d))
            t.MasterSource.update1(dict(
                source_id=m["source_id"], ra_deg=ra, dec_deg=dec, pos_weight=weight,
                n_detections=m["n_detections"] + 1, first_mjd=min(m["first_mjd"], image["mjd"]),
                last_mjd=max(m["last_mjd"], image["mjd"]),
            ))  # fmt: skip
            t.Detection.update1(dict(key, source_id=m["source_id"]))
            report.matched.append(int(m["source_id"]))
        elif a in near_a_master:
            t.Detection.update1(dict(key, ambiguous=True))
            report.ambiguous += 1
        else:
            left.append(d)
    return left


def _match_candidates(t, image: dict, detections: list[dict], radius: float, report: CrossmatchReport) -> None:
    candidates = t.Candidate.to_dicts(order_by="candidate_id")
    pairs = _pairs_within([d["ra_deg"] for d in detections], [d["dec_deg"] for d in detections],
                          [c["ra_deg"] for c in candidates], [c["dec_deg"] for c in candidates], radius)  # fmt: skip
    assigned = _one_to_one(pairs)
    near = {a for a, _, _ in pairs}
    next_id = max([c["candidate_id"] for c in candidates] + [0]) + 1
    for a, d in enumerate(detections):
        key = {"image_id": d["image_id"], "detection": d["detection"]}
        if a in assigned:
            c = candidates[assigned[a]]
            ra, dec, weight = _moved(c["ra_deg"], c["dec_deg"], c["pos_weight"], d["ra_deg"], d["dec_deg"], _weight(d))
            t.Candidate.update1(dict(
                candidate_id=c["candidate_id"], ra_deg=ra, dec_deg=dec, pos_weight=weight,
                n_detections=c["n_detections"] + 1, first_mjd=min(c["first_mjd"], image["mjd"]),
                last_mjd=max(c["last_mjd"], image["mjd"]),
            ))  # fmt: skip
            t.Detection.update1(dict(key, candidate_id=c["candidate_id"]))
            report.candidates_seen += 1
        elif a in near:
            t.Detection.update1(dict(key, ambiguous=True))
            report.ambiguous += 1
        else:
            t.Candidate.insert1(dict(
                candidate_id=next_id, ra_deg=d["ra_deg"], dec_deg=d["dec_deg"], pos_weight=_weight(d),
                n_detections=1, first_mjd=image["mjd"], last_mjd=image["mjd"],
            ))  # fmt: skip
            t.Detection.update1(dict(key, candidate_id=next_id))
            next_id += 1
            report.new_candidates += 1


def _promote(t, settings: CatalogueSettings, reference: Reference | None, image_id: str) -> list[int]:
    ready = (t.Candidate & f"n_detections >= {int(settings.promote_after)}").to_dicts(order_by="candidate_id")
    if not ready:
        return []
    ids = t.MasterSource.to_arrays("source_id") if t.MasterSource else np.zeros(0)
    next_id = int(np.max(ids)) + 1 if len(ids) else 1
    refs = (
        reference.match([c["ra_deg"] for c in ready], [c["dec_deg"] for c in ready], settings.reference_radius_arcsec)
        if reference is not None else [None] * len(ready)
    )  # fmt: skip
    promoted = []
    for c, ref in zip(ready, refs, strict=True):
        row = dict(
            source_id=next_id, ra_deg=c["ra_deg"], dec_deg=c["dec_deg"], pos_weight=c["pos_weight"],
            n_detections=c["n_detections"], first_mjd=c["first_mjd"], last_mjd=c["last_mjd"], promoted=_now(),
            promoted_in=image_id[:64],
        )  # fmt: skip
        if ref is not None:
            row.update(ref_name=ref[0][:64], ref_sep_arcsec=ref[1], ref_flux_jy=ref[2])
        t.MasterSource.insert1(row)
        for key in (t.Detection & {"candidate_id": c["candidate_id"]}).keys():  # noqa: SIM118 - DataJoint keys
            t.Detection.update1(dict(key, source_id=next_id))
        (t.Candidate & {"candidate_id": c["candidate_id"]}).delete_quick()
        promoted.append(next_id)
        next_id += 1
    return promoted


def promoted_by(db: LabDatabase, image_id: str) -> list[int]:
    """Ids of the master sources the cross-match of ``image_id`` promoted (to resume their back-fill)."""
    return sorted((tables(db).MasterSource & {"promoted_in": image_id}).to_arrays("source_id").tolist())


def master_sources(db: LabDatabase) -> list[dict]:
    """The master list, by id."""
    return tables(db).MasterSource.to_dicts(order_by="source_id")
