"""Parse ADAMACS folder names into session and scan keys, or say exactly what is wrong.

Session folder: ``<INITIALS>_<ANIMALID>_<YYYY-MM-DD>_sess<SESSIONID>``
Scan folder:    ``scan<SCANID>``
e.g. ``XX_ANM-2172_2026-02-10_sess9FY6AIRM/scan9FY6AIRM/``
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from labpipe.errors import InvalidInput

INITIALS = re.compile(r"[A-Z]{2,3}")
ANIMAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
RUN_ID = re.compile(r"[A-Z0-9]{8}")
SESSION_PATTERN = "INITIALS_ANIMALID_YYYY-MM-DD_sessSESSIONID"


@dataclass(frozen=True)
class SessionName:
    initials: str
    animal_id: str
    session_date: dt.date
    session_id: str


class FolderNameError(InvalidInput, ValueError):
    """A folder name that does not follow the convention; the message says which token and why."""


def parse_session_name(name: str, *, today: dt.date | None = None) -> SessionName:
    """Parse a session folder name; raises ``FolderNameError`` naming the bad token."""
    tokens = name.split("_")
    if len(tokens) != 4:
        raise FolderNameError(
            f"session folder {name!r}", f"expected 4 underscore-separated tokens {SESSION_PATTERN}, got {len(tokens)}"
        )
    initials, animal, date_text, sess = tokens
    if not INITIALS.fullmatch(initials):
        raise FolderNameError(f"initials token {initials!r}", "expected 2-3 uppercase letters A-Z")
    if not ANIMAL_ID.fullmatch(animal) or len(animal) > 32:
        raise FolderNameError(f"animal id token {animal!r}", "expected up to 32 letters, digits and hyphens")
    if not DATE.fullmatch(date_text):
        raise FolderNameError(f"date token {date_text!r}", "expected an ISO date YYYY-MM-DD")
    try:
        date = dt.date.fromisoformat(date_text)
    except ValueError:
        raise FolderNameError(f"date token {date_text!r}", "not a real calendar date") from None
    if date > (today or dt.date.today()) + dt.timedelta(days=1):
        raise FolderNameError(f"date token {date_text!r}", "lies in the future")
    if not sess.startswith("sess"):
        raise FolderNameError(f"session token {sess!r}", "expected 'sess' followed by 8 characters A-Z0-9")
    session_id = sess[len("sess") :]
    if not RUN_ID.fullmatch(session_id):
        raise FolderNameError(f"session id {session_id!r} in {sess!r}", "expected exactly 8 characters A-Z0-9")
    return SessionName(initials, animal, date, session_id)


def parse_scan_name(name: str) -> str:
    """The scan id of a ``scan<SCANID>`` folder; raises ``FolderNameError`` naming the problem."""
    if not name.startswith("scan"):
        raise FolderNameError(f"scan folder {name!r}", "expected 'scan' followed by 8 characters A-Z0-9")
    scan_id = name[len("scan") :]
    if not RUN_ID.fullmatch(scan_id):
        raise FolderNameError(f"scan id {scan_id!r} in {name!r}", "expected exactly 8 characters A-Z0-9")
    return scan_id


def session_folder_name(initials: str, animal_id: str, date: dt.date, session_id: str) -> str:
    return f"{initials}_{animal_id}_{date.isoformat()}_sess{session_id}"
