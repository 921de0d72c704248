"""Calibration registry answers: validity windows backward and forward, G interpolation pair, pending
registrations hidden from appliers, QA rejection, held groups."""

from __future__ import annotations

import threading
import time

import numpy as np
from labpipe.radio import calibrate, calregistry

DAY = 61000.0
HOUR = 1 / 24


def _row(name, kind, solve, cadence="24h", ms="/ms/a.ms"):
    start, end = calregistry.window(kind, solve, solve - 0.002, solve + 0.002, calregistry.ValiditySettings())
    return dict(
        table_name=name, kind=kind, cadence=cadence, path=f"/cal/{name}", ms_path=ms, solve_mjd=solve,
        valid_start_mjd=start, valid_end_mjd=end, flagged_fraction=0.0, median_snr=100.0, phase_scatter_deg=1.0,
    )  # fmt: skip


def _register(db, row, passed=True):
    calregistry.begin_registration(db, row)
    return calregistry.finish_registration(db, row["table_name"], passed, "passed" if passed else "median SNR 2 < 5")


def test_lookup_windows_interpolation_gap_and_rejection(lab_db):
    assert _register(lab_db, _row("d1_24h.kcal", "K", DAY)) == "active"
    assert _register(lab_db, _row("d1_24h.bpcal", "BP", DAY)) == "active"
    assert _register(lab_db, _row("d2_24h.bpcal", "BP", DAY + 1, ms="/ms/b.ms")) == "active"
    for h in (0, 2):
        assert _register(lab_db, _row(f"g{h}_1h.gpcal", "G", DAY + 0.75 * h * HOUR, cadence="1h")) == "active"
    assert _register(lab_db, _row("bad_1h.gpcal", "G", DAY + 0.7 * HOUR, cadence="1h"), passed=False) == "rejected"

    between = calregistry.lookup(lab_db, DAY + 0.75 * HOUR)
    assert between.bp["table_name"] == "d1_24h.bpcal" and between.k["table_name"] == "d1_24h.kcal"
    assert [g["table_name"] for g in between.g] == ["g0_1h.gpcal", "g2_1h.gpcal"]  # the rejected one never
    before = calregistry.lookup(lab_db, DAY - 0.5 * HOUR)  # windows reach backward
    assert before.complete and [g["table_name"] for g in before.g] == ["g0_1h.gpcal"]
    late = calregistry.lookup(lab_db, DAY + 0.9)  # nearest 24 h solve wins
    assert late.bp["table_name"] == "d2_24h.bpcal" and not late.g and not late.complete  # a gap: no G


def test_pending_registration_is_invisible_and_waited_for(lab_db):
    _register(lab_db, _row("a_24h.bpcal", "BP", DAY))
    _register(lab_db, _row("a_1h.gpcal", "G", DAY, cadence="1h"))
    calregistry.begin_registration(lab_db, _row("b_1h.gpcal", "G", DAY + 0.5 * HOUR, cadence="1h"))
    found = calregistry.lookup(lab_db, DAY + 0.4 * HOUR)
    assert found.pending == ["b_1h.gpcal"] and [g["table_name"] for g in found.g] == ["a_1h.gpcal"]

    def finish():
        time.sleep(1.0)
        calregistry.finish_registration(lab_db, "b_1h.gpcal", True, "passed")

    thread = threading.Thread(target=finish)
    thread.start()
    waited = calregistry.wait_for_registrations(lab_db, DAY + 0.4 * HOUR, timeout_s=20, poll_s=0.2)
    thread.join()
    assert not waited.pending and [g["table_name"] for g in waited.g] == ["a_1h.gpcal", "b_1h.gpcal"]


def test_held_groups_are_released_when_a_table_covers_them(lab_db):
    assert calregistry.hold(lab_db, "2025-10-13T13:28:03", "/ms/x.ms", DAY + 3, "no valid BP")
    assert not calregistry.hold(lab_db, "2025-10-13T13:28:03", "/ms/x.ms", DAY + 3, "no valid BP")  # one alert only
    assert calregistry.releasable(lab_db) == []
    _register(lab_db, _row("c_24h.bpcal", "BP", DAY + 3))
    _register(lab_db, _row("c_1h.gpcal", "G", DAY + 3, cadence="1h"))
    assert [g["group_id"] for g in calregistry.releasable(lab_db)] == ["2025-10-13T13:28:03"]
    calregistry.release(lab_db, "2025-10-13T13:28:03")
    assert calregistry.held_groups(lab_db) == []


def test_g_interpolation_between_tables_is_linear_in_amplitude_and_phase():
    def table(t, value):
        v = np.full((1, 1, 2), value, dtype=complex)
        return calibrate.Solutions("G", v, np.zeros(v.shape, bool), np.ones(v.shape), np.array([t]), np.array([]),
                                   {}, ["a", "b"], ["X"], 0, 60.0)  # fmt: skip

    g, flags = calibrate.interpolate_gains([table(0.0, 1.0), table(1.0, 3 * np.exp(1j * np.pi / 2))], np.array([0.5]))
    np.testing.assert_allclose(g[0, 0, 0], 2 * np.exp(1j * np.pi / 4))
    assert not flags.any()
