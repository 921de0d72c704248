"""Animals, surgeries and cages from PyRAT's REST API (v3) into the subject tables.

PyRAT (Scionics) answers ``GET <instance>/api/v3/animals`` with a JSON list, selecting
fields with repeated ``k`` parameters, sorting with ``s``, paging with ``l`` (limit) and
``o`` (offset) and telling the total in the ``x-total-count`` header; authentication is
HTTP basic with the client token as user name and the user token as password.

``sync_subjects`` reads every page first and writes in one transaction, so an outage
(PyRAT unreachable, an error status, a page that is not JSON) raises ``ServiceUnavailable``
naming PyRAT and leaves the tables as they were; nothing else waits on it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import httpx
from labpipe.errors import LabpipeError
from labpipe.records.settings import PyratSettings

ANIMAL_KEYS = [
    "animalid",
    "eartag_or_id",
    "labid",
    "sex",
    "dateborn",
    "datesacrificed",
    "state",
    "species_name",
    "strain_name",
    "owner_fullname",
    "responsible_fullname",
    "licence_number",
    "cageid",
    "cagenumber",
    "cagetype",
    "room_name",
    "rack_name",
    "procedures",
]


class ServiceUnavailable(LabpipeError):
    """A service outside labpipe (PyRAT, RSpace) did not answer or answered with an error."""


class PyratClient:
    """A read-only client of one PyRAT instance."""

    def __init__(self, settings: PyratSettings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.base = settings.url.rstrip("/") + "/api/v3"
        self._client = httpx.Client(
            auth=(settings.client_token.get_secret_value(), settings.user_token.get_secret_value()),
            timeout=settings.timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def _get(self, endpoint: str, params: dict | list | None = None) -> httpx.Response:
        url = f"{self.base}/{endpoint}"
        try:
            response = self._client.get(url, params=params)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"PyRAT {self.base}",
                f"unreachable: {type(exc).__name__}: {exc}",
                "subject records were not updated; the next scheduled run retries",
            ) from exc
        if response.status_code in (401, 403):
            raise ServiceUnavailable(
                f"PyRAT {self.base}",
                f"refused the API tokens ({response.status_code})",
                "check the client and user tokens and that the API client is enabled",
            )
        if response.status_code >= 400:
            raise ServiceUnavailable(
                f"PyRAT {self.base}",
                f"{endpoint} answered {response.status_code}: {response.text[:200]}",
                "subject records were not updated; retried next run",
            )
        return response

    def version(self) -> str:
        return str(self._get("version").json())

    def animals(self) -> list[dict]:
        """Every animal visible to the tokens in the configured states, all pages."""
        rows: list[dict] = []
        offset = 0
        while True:
            params = [("k", key) for key in ANIMAL_KEYS] + [("s", "eartag_or_id:asc")]
            params += [("state", state) for state in self.settings.states]
            params += [("l", self.settings.page_size), ("o", offset)]
            if self.settings.owner:
                params.append(("owner_fullname", self.settings.owner))
            response = self._get("animals", params)
            try:
                page = response.json()
                total = int(response.headers.get("x-total-count", len(page)))
            except ValueError as exc:
                raise ServiceUnavailable(
                    f"PyRAT {self.base}",
                    f"animals page at offset {offset} is not JSON",
                    "subject records were not updated",
                ) from exc
            rows.extend(page)
            offset += len(page)
            if not page or offset >= total:
                return rows


def _date(value) -> dt.date | None:
    if not value:
        return None
    return dt.date.fromisoformat(str(value)[:10])


@dataclass
class SubjectRows:
    """Rows for the subject tables built from PyRAT's animals."""

    animals: list[dict] = field(default_factory=list)
    surgeries: list[dict] = field(default_factory=list)
    cages: dict[str, dict] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # animals without an ear tag or id (reported, not stored)


def subject_rows(animals: list[dict]) -> SubjectRows:
    """Animals (keyed by ear tag or id, the folder names' ANIMALID), their surgeries and cages."""
    rows = SubjectRows()
    for animal in animals:
        animal_id = str(animal.get("eartag_or_id") or "").strip()
        if not animal_id or len(animal_id) > 32:
            rows.skipped.append(f"PyRAT animal {animal.get('animalid')}: ear tag/id {animal_id!r} is not usable")
            continue
        cage = animal.get("cagenumber")
        if cage:
            rows.cages[str(cage)] = dict(
                cage=str(cage)[:32],
                cage_type=str(animal.get("cagetype") or "")[:64],
                room=str(animal.get("room_name") or "")[:64],
                rack=str(animal.get("rack_name") or "")[:64],
            )
        sex = str(animal.get("sex") or "u").lower()[:1]
        rows.animals.append(
            dict(
                animal_id=animal_id,
                pyrat_id=int(animal.get("animalid") or 0),
                lab_id=str(animal.get("labid") or "")[:64],
                sex=sex if sex in ("m", "f") else "u",
                birth_date=_date(animal.get("dateborn")),
                sacrificed=_date(animal.get("datesacrificed")),
                state=str(animal.get("state") or "")[:32],
                species=str(animal.get("species_name") or "")[:64],
                strain=str(animal.get("strain_name") or "")[:255],
                owner=str(animal.get("owner_fullname") or "")[:128],
                responsible=str(animal.get("responsible_fullname") or "")[:128],
                licence=str(animal.get("licence_number") or "")[:64],
                cage=str(cage)[:32] if cage else None,
            )
        )
        for number, procedure in enumerate(animal.get("procedures") or [], start=1):
            rows.surgeries.append(
                dict(
                    animal_id=animal_id,
                    surgery_no=number,
                    procedure=str(procedure.get("procedure_name") or procedure.get("name") or "")[:255],
                    surgery_date=_date(procedure.get("procedure_date") or procedure.get("date")),
                    comment=str(procedure.get("comment") or "")[:2000],
                )
            )
    return rows


@dataclass
class SubjectSyncReport:
    animals: int
    inserted: int
    updated: int
    surgeries: int
    cages: int
    skipped: list[str]

    def as_json(self) -> dict:
        return self.__dict__.copy()


def sync_subjects(db, settings: PyratSettings, *, transport: httpx.BaseTransport | None = None) -> SubjectSyncReport:
    """Read every animal from PyRAT, then write animals, cages and surgeries in one transaction."""
    from labpipe.records.schema import tables

    client = PyratClient(settings, transport=transport)
    try:
        rows = subject_rows(client.animals())
    finally:
        client.close()
    t = tables(db)
    known = {a["animal_id"]: a for a in t.Animal.to_dicts()}
    inserted = updated = 0
    with t.schema.connection.transaction:
        for cage in rows.cages.values():
            if t.Cage & {"cage": cage["cage"]}:
                t.Cage.update1(cage)
            else:
                t.Cage.insert1(cage)
        for animal in rows.animals:
            if animal["animal_id"] not in known:
                t.Animal.insert1(animal)
                inserted += 1
            elif any(known[animal["animal_id"]].get(k) != v for k, v in animal.items()):
                t.Animal.update1(animal)
                updated += 1
        ids = [{"animal_id": a["animal_id"]} for a in rows.animals]
        if ids:
            (t.Animal.Surgery & ids).delete_quick()
        t.Animal.Surgery.insert(rows.surgeries)
    return SubjectSyncReport(len(rows.animals), inserted, updated, len(rows.surgeries), len(rows.cages), rows.skipped)
