"""The radio calibration block: sky model, solver, QA gate, validity windows and imaging settings."""

from __future__ import annotations

from labpipe.blocks.resolve import resolve
from labpipe.radio.calrun import RadioCalSettings
from prefect.blocks.core import Block


class RadioCalibration(Block, RadioCalSettings):
    """How radio groups are calibrated (K/BP/G by StEFCal), gated, registered, applied and imaged (ducc0)."""

    _block_type_name = "labpipe radio calibration"
    _block_type_slug = "labpipe-radio-calibration"
    _description = (
        "Radio calibration and imaging (DSA-110): catalog sky model and primary beam, StEFCal solve settings and "
        "the QA gate a table must pass to be registered, validity windows of 24 h and 1 h tables, imaging "
        "(size, weighting, CLEAN) and image QA."
    )
    _code_example = """
    from labpipe.blocks.radio_calibrate import RadioCalibration
    cal = RadioCalibration.load("BLOCK_NAME")
    print(cal.calibration.refant, cal.imaging.weighting)
    """


def calibration_settings(name: str | None = "default") -> RadioCalSettings:
    """The ``RadioCalibration`` document ``name``, or the built-in defaults."""
    return resolve(RadioCalibration, name, RadioCalSettings())


__all__ = ["RadioCalibration", "calibration_settings"]
