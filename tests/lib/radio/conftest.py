"""Shared by the calibration tests: small simulated groups with known gains, and their solution.

The groups are made with pyuvdata by ``calgroup.py`` (independent of labpipe's predict and solver):
known point sources through an Airy beam, per-antenna delays, bandpasses and drifting gains, noise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from labpipe.radio import calibrate, skymodel
from labpipe.radio.ms import read_layout


def calgroup_module():
    spec = importlib.util.spec_from_file_location("calgroup", Path(__file__).with_name("calgroup.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["calgroup"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def calgroup():
    """The ``calgroup`` module (a pyuvdata simulation of one group)."""
    return calgroup_module()


@pytest.fixture(scope="session")
def sim(tmp_path_factory):
    return calgroup_module().simulate_group(tmp_path_factory.mktemp("calgroup"), n_ant=32, n_chan=32, n_time=8)


@pytest.fixture(scope="session")
def solved(sim):
    layout = read_layout(sim.ms, channels_per_unit=16)
    catalog = skymodel.read_catalog(sim.catalog)
    return layout, calibrate.solve_group(layout, catalog, calibrate.CalibrationSettings())
