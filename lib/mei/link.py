"""Close the loop: link ingested scans to the stimuli they showed (and so to the MEIs).

Run after ingest. Every scan whose raw files include a stimuli manifest
(``stimuli.json``, see ``labpipe.mei.bench``) and that is not linked yet is read,
checked and linked in one transaction: ``ScanStimuli`` (trial order, responses),
``Shown`` (each stimulus and its repeats), ``Recorded`` (units and their columns).
A scan that cannot be linked (unknown stimulus ids, files changed since ingest,
shapes that disagree) is recorded in ``LinkFailure`` with the reason and retried on
the next run; it never stops the other scans.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.files import sha256_file
from labpipe.mei.bench import FORMAT, RESPONSES_FILE, STIMULI_FILE
from labpipe.mei.schema import tables

UNIT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


@dataclass
class LinkReport:
    linked: list[dict] = field(default_factory=list)  # scan key + trials, stimuli, mei stimuli
    failed: list[dict] = field(default_factory=list)  # scan folder + reason
    already: int = 0


def _checked_file(scan_dir: Path, name: str, checksum: str | None) -> Path:
    path = scan_dir / name
    if not path.is_file():
        raise InvalidInput(path, "named by the stimuli manifest but missing")
    if checksum and sha256_file(path) != checksum:
        raise InvalidInput(path, "changed since it was ingested (checksum differs)", "restore the recorded file")
    return path


def read_scan_stimuli(scan_dir: Path, checksums: dict[str, str], known) -> dict:
    """Read and check a scan's stimuli manifest and responses; returns the rows to insert (without keys)."""
    path = _checked_file(scan_dir, STIMULI_FILE, checksums.get(STIMULI_FILE))
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise InvalidInput(path, f"not JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise InvalidInput(path, f"format {manifest.get('format')!r}, expected {FORMAT!r}")
    trials, units = manifest.get("trials"), manifest.get("units")
    if not isinstance(trials, list) or not trials or not all(isinstance(t, str) for t in trials):
        raise InvalidInput(path, "'trials': expected a non-empty list of stimulus ids")
    if not isinstance(units, list) or not units or len(set(units)) != len(units):
        raise InvalidInput(path, "'units': expected a non-empty list of distinct unit ids")
    bad_units = [u for u in units if not isinstance(u, str) or not UNIT_ID.fullmatch(u)]
    if bad_units:
        raise InvalidInput(path, f"unit ids {bad_units[:3]}: expected letters, digits, '.', '_', '-'")
    unknown = sorted(set(trials) - known(set(trials)))
    if unknown:
        raise InvalidInput(
            path,
            f"{len(unknown)} stimulus ids are not in the database, e.g. {unknown[:3]}",
            "register the stimulus set the rig showed, then link again",
        )
    responses_name = manifest.get("responses", RESPONSES_FILE)
    responses_path = _checked_file(scan_dir, responses_name, checksums.get(responses_name))
    try:
        responses = np.load(responses_path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InvalidInput(responses_path, f"not a .npy array: {exc}") from exc
    if responses.shape != (len(trials), len(units)):
        raise InvalidInput(
            responses_path, f"shape {responses.shape}, expected (trials, units) = ({len(trials)}, {len(units)})"
        )
    if not np.issubdtype(responses.dtype, np.number):
        raise InvalidInput(responses_path, f"dtype {responses.dtype}: expected numbers")
    return {"trials": trials, "units": units, "responses": responses.astype(np.float32)}


def link_scans(db, share: Path, *, progress: Callable[[int, int], None] | None = None) -> LinkReport:
    """Link every ingested, not yet linked scan that carries a stimuli manifest. Idempotent."""
    t = tables(db)
    it = t.ingest
    share = Path(share)
    report = LinkReport()
    with_manifest = it.RawFile & {"file_name": STIMULI_FILE}
    todo = (it.Scan & with_manifest) - t.ScanStimuli
    report.already = len(it.Scan & with_manifest & t.ScanStimuli)
    rows = (todo * it.Session.proj("animal_id")).to_dicts()

    def known(ids: set[str]) -> set[str]:
        if not ids:
            return set()
        return set((t.Stimulus & [{"stimulus_id": i} for i in ids]).to_arrays("stimulus_id"))

    for index, scan in enumerate(rows, start=1):
        key = {"session_id": scan["session_id"], "scan_id": scan["scan_id"]}
        files = (it.RawFile & key).to_dicts()
        checksums = {f["file_name"]: f["checksum"] for f in files}
        try:
            data = read_scan_stimuli(share / scan["folder"], checksums, known)
            _insert_link(t, key, scan["animal_id"], data)
        except InvalidInput as exc:
            reason = str(exc)[:2000]
            with t.schema.connection.transaction:  # replace=True is MySQL-only in DataJoint 2.3.5
                (t.LinkFailure & key).delete_quick()
                t.LinkFailure.insert1(dict(key, reason=reason, failed=dt.datetime.now()))
            report.failed.append({"scan": scan["folder"], "reason": reason})
        else:
            (t.LinkFailure & key).delete_quick()
            mei_ids = t.MeiStimulus & [{"stimulus_id": s} for s in set(data["trials"])]
            report.linked.append(
                dict(
                    key,
                    folder=scan["folder"],
                    trials=len(data["trials"]),
                    stimuli=len(set(data["trials"])),
                    mei_stimuli=len(mei_ids),
                    units=len(data["units"]),
                )
            )
        if progress:
            progress(index, len(rows))
    return report


def _insert_link(t, key: dict, animal_id: str, data: dict) -> None:
    trials, units = data["trials"], data["units"]
    with t.schema.connection.transaction:
        t.Unit.insert([{"animal_id": animal_id, "unit_id": u} for u in units], skip_duplicates=True)
        t.ScanStimuli.insert1(
            dict(
                key,
                stimulus_file=STIMULI_FILE,
                n_trials=len(trials),
                n_units=len(units),
                trial_stimuli=np.array(trials),
                responses=data["responses"],
                linked=dt.datetime.now(),
            )
        )
        t.ScanStimuli.Shown.insert([dict(key, stimulus_id=s, repeats=n) for s, n in Counter(trials).items()])
        t.ScanStimuli.Recorded.insert(
            [dict(key, animal_id=animal_id, unit_id=u, response_column=i) for i, u in enumerate(units)]
        )
