"""PyRAT animals, surgeries and cages into the subject tables, against a loopback stand-in.

PyRAT is a cloud service that cannot run here: ``standins.pyrat_app`` implements the
documented v3 endpoints labpipe calls (``/animals`` with k/s/l/o/state paging and the
x-total-count header, basic auth with the client and user tokens); the client is the real one.
"""

import datetime as dt

import pytest
from labpipe.ingest.run import ingest_share
from labpipe.ingest.simulate import simulate_share
from labpipe.records.pyrat import ServiceUnavailable, sync_subjects
from labpipe.records.schema import tables
from labpipe.records.settings import PyratSettings

from tests.lib.records.standins import CLIENT_TOKEN, USER_TOKEN, free_port, pyrat_app, serve


def _animal(i: int, **extra) -> dict:
    return {
        "animalid": 1000 + i,
        "eartag_or_id": f"ANM-{2100 + i}",
        "labid": f"L{i}",
        "sex": "f" if i % 2 else "m",
        "dateborn": f"2025-11-0{i % 9 + 1}T00:00:00",
        "state": "live",
        "species_name": "Mouse",
        "strain_name": "C57BL/6J-Thy1-GCaMP6s",
        "owner_fullname": "Alice Brown",
        "licence_number": "84-02.04.2023.A001",
        "cagenumber": f"C-{i // 3}",
        "cagetype": "GM500",
        "room_name": "R2.014",
        "procedures": [
            {"procedure_name": "cranial window implant", "procedure_date": "2026-01-05", "comment": "V1, 4 mm"},
            {"procedure_name": "AAV injection", "procedure_date": "2026-01-05"},
        ],
        **extra,
    }


def _settings(url: str, **overrides) -> PyratSettings:
    return PyratSettings(url=f"{url}/pyrat", client_token=CLIENT_TOKEN, user_token=USER_TOKEN, page_size=4, **overrides)


def test_animals_surgeries_and_cages_arrive_over_several_pages_and_updates_replace(lab_db):
    animals = [_animal(i) for i in range(10)] + [_animal(99, state="sacrificed", datesacrificed="2026-02-01")]
    with serve(pyrat_app(animals)) as url:
        report = sync_subjects(lab_db, _settings(url))
        t = tables(lab_db)
        assert (report.animals, report.inserted, report.surgeries, report.cages) == (11, 11, 22, 5)
        row = (t.Animal & {"animal_id": "ANM-2103"}).fetch1()
        assert (row["sex"], row["birth_date"], row["cage"], row["pyrat_id"]) == ("f", dt.date(2025, 11, 4), "C-1", 1003)
        assert (t.Animal & {"animal_id": "ANM-2199"}).fetch1("sacrificed") == dt.date(2026, 2, 1)
        surgeries = (t.Animal.Surgery & {"animal_id": "ANM-2100"}).to_dicts(order_by="surgery_no")
        assert [s["procedure"] for s in surgeries] == ["cranial window implant", "AAV injection"]
        assert (t.Cage & {"cage": "C-3"}).fetch1("room") == "R2.014"
        animals[3].update(cagenumber="C-9", procedures=[])  # moved to another cage, record cleaned up
        again = sync_subjects(lab_db, _settings(url))
    assert (again.inserted, again.updated) == (0, 1)
    assert (t.Animal & {"animal_id": "ANM-2103"}).fetch1("cage") == "C-9"
    assert len(t.Animal.Surgery & {"animal_id": "ANM-2103"}) == 0 and len(t.Animal.Surgery()) == 20


@pytest.mark.parametrize("outage", ["down", "status", "tokens"])
def test_a_pyrat_outage_is_named_changes_nothing_and_blocks_no_ingest(lab_db, tmp_path, outage):
    with serve(pyrat_app([_animal(i) for i in range(3)])) as url:
        sync_subjects(lab_db, _settings(url))
    t = tables(lab_db)
    before = t.Animal.to_dicts()
    fail = {"status": 503} if outage == "status" else {}
    with serve(pyrat_app([_animal(i, sex="u") for i in range(6)], fail=fail)) as url:
        if outage == "down":
            url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        settings = _settings(url, timeout_s=2)
        if outage == "tokens":
            settings = PyratSettings(**{**settings.model_dump(), "user_token": "wrong"})
        with pytest.raises(ServiceUnavailable, match="PyRAT http://127.0.0.1") as caught:
            sync_subjects(lab_db, settings)
    assert {"down": "unreachable", "status": "503", "tokens": "refused the API tokens"}[outage] in str(caught.value)
    assert t.Animal.to_dicts() == before  # nothing half-written
    simulate_share(tmp_path / "share", sessions_per_user=1, malformed=False, light=True, users={"alice": "AB"})
    assert ingest_share(lab_db, tmp_path / "share").status == "succeeded"  # the rest of the lab goes on
