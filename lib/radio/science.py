"""From an image to science, one call per image: sources found, identities given, fluxes measured, variables flagged.

``process_image(db, image_id, prefix, settings)`` runs, each step recorded before the next starts
(``Image.status``: found -> catalogued -> measured), so a rerun after a crash resumes where it
stopped and a rerun after success does nothing:

1. PyBDSF on ``<prefix>.image.fits`` -> ``<prefix>.srl.fits`` and ``Detection`` rows (``sourcefind``);
2. cross-match to the master list, candidates and the reference catalogue; promotions (``catalogue``);
3. forced photometry of every master source the image covers, and of newly promoted sources in
   every earlier image that covers them (``photometry``);
4. variability of every source measured in this image (``variability``).

The settings are one pydantic model (``RadioScienceSettings``) with a section per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.db.connect import LabDatabase
from labpipe.radio import catalogue, photometry, skymodel, sourcefind, variability
from labpipe.radio.catalogue import CatalogueSettings, Reference
from labpipe.radio.mosaic import MosaicSettings
from labpipe.radio.photometry import PhotometrySettings
from labpipe.radio.sourcefind import SourceFindSettings
from labpipe.radio.variability import VariabilitySettings
from pydantic import BaseModel, Field


class RadioScienceSettings(BaseModel):
    """Source finding, master catalogue, forced photometry, variability and mosaics of the radio lifecycle."""

    sources: SourceFindSettings = Field(default_factory=SourceFindSettings, description="PyBDSF source finding.")
    catalogue: CatalogueSettings = Field(
        default_factory=CatalogueSettings, description="Cross-matching and promotion to the master list."
    )
    photometry: PhotometrySettings = Field(
        default_factory=PhotometrySettings, description="Forced photometry at master positions."
    )
    variability: VariabilitySettings = Field(
        default_factory=VariabilitySettings, description="Variable and ESE-candidate criteria."
    )
    mosaic: MosaicSettings = Field(default_factory=MosaicSettings, description="Declination-strip mosaics.")
    reference_catalog: str = Field(
        "", description="Reference catalogue CSV (NVSS-like); empty: <radio>/static/catalogs/nvss.csv if present."
    )


def reference_for(radio_root: Path | None, settings: RadioScienceSettings) -> Reference | None:
    """The reference catalogue the settings name (or the radio tree's NVSS extract), None when there is none."""
    path = Path(settings.reference_catalog) if settings.reference_catalog else None
    if path is None and radio_root is not None:
        candidate = Path(radio_root) / "static" / "catalogs" / "nvss.csv"
        path = candidate if candidate.exists() else None
    return Reference.from_catalog(skymodel.read_catalog(path)) if path else None


@dataclass
class ImageScience:
    """What the science steps did for one image."""

    image_id: str
    catalogue: str = ""
    n_detections: int = 0
    matched: int = 0
    new_candidates: int = 0
    promoted: list[int] = field(default_factory=list)
    measured: int = 0
    backfilled: int = 0
    variables: list[int] = field(default_factory=list)
    ese_candidates: list[int] = field(default_factory=list)
    already_done: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def process_image(
    db: LabDatabase,
    image_id: str,
    prefix: Path,
    settings: RadioScienceSettings | None = None,
    *,
    reference: Reference | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImageScience:
    """Find, identify, measure and assess the sources of one image (see the module doc). Idempotent."""
    settings = settings or RadioScienceSettings()
    t = catalogue.tables(db)
    report = ImageScience(image_id)
    started = time.perf_counter()

    def tick(step: int) -> None:
        if progress:
            progress(step, 4)

    existing = (t.Image & {"image_id": image_id}).to_dicts()
    if existing and existing[0]["status"] == "measured":
        report.already_done, report.catalogue = True, existing[0]["catalogue"]
        report.n_detections = existing[0]["n_detections"]
        return report
    if not existing:
        found = sourcefind.find_sources(Path(f"{prefix}.image.fits"), Path(f"{prefix}.pb.fits"),
                                        Path(f"{prefix}.srl.fits"), settings.sources)  # fmt: skip
        row = catalogue.image_record(image_id, prefix, found.catalogue, found.rms_jy, len(found.detections))
        catalogue.record_detections(db, row, found.detections, reference, settings.catalogue)
        report.timings["find_s"] = found.seconds
    image = (t.Image & {"image_id": image_id}).fetch1()
    report.catalogue, report.n_detections = image["catalogue"], image["n_detections"]
    tick(1)

    t1 = time.perf_counter()
    matched = catalogue.crossmatch(db, image_id, settings.catalogue, reference)
    report.matched, report.new_candidates = len(matched.matched), matched.new_candidates
    # a rerun after a crash between cross-match and back-fill finds the promotions in the table
    report.promoted = matched.promoted if not matched.already_done else catalogue.promoted_by(db, image_id)
    report.timings["crossmatch_s"] = time.perf_counter() - t1
    tick(2)

    t2 = time.perf_counter()
    report.measured = photometry.measure_image(db, image_id, settings.photometry)
    report.backfilled = photometry.backfill(db, report.promoted, settings.photometry)
    t.Image.update1({"image_id": image_id, "status": "measured"})
    report.timings["photometry_s"] = time.perf_counter() - t2
    tick(3)

    t3 = time.perf_counter()
    measured_here = (t.ForcedFlux & {"image_id": image_id}).to_arrays("source_id").tolist()
    assessed = variability.update_variability(db, measured_here + report.promoted, settings.variability)
    report.variables = sorted(s for s, a in assessed.items() if a.is_variable)
    report.ese_candidates = sorted(s for s, a in assessed.items() if a.ese_candidate)
    report.timings["variability_s"] = time.perf_counter() - t3
    report.timings["total_s"] = time.perf_counter() - started
    tick(4)
    return report
