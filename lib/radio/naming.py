"""DSA-110 naming conventions: subband file names, group ids, date folders.

Subband files are ``YYYY-MM-DDTHH:MM:SS_sbNN.hdf5`` (the seed's older form
``YYYY-MM-DD_HH_MM_SS_sbNN.hdf5`` is read too). A group id is the ISO timestamp
of its earliest file, ``YYYY-MM-DDTHH:MM:SS``; Measurement Sets and logs are
named after it (``<group id>.ms``) inside ``YYYY-MM-DD`` folders. Where a name
must not hold colons (the tmpfs staging folder), ``fs_safe`` gives
``YYYY-MM-DD_HH_MM_SS``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

_NAME = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T_ ](?P<h>\d{2})[:_](?P<m>\d{2})[:_](?P<s>\d{2})_sb(?P<sb>\d{2})\.(?:hdf5|h5|uvh5)$"
)
ISO = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class SubbandName:
    """What a subband file's name says: when it was written and which subband it holds."""

    timestamp: dt.datetime
    subband: int


def parse_subband_name(name: str) -> SubbandName | None:
    """``SubbandName`` of a file name, or None when the name is not a subband file's."""
    match = _NAME.match(name)
    if not match:
        return None
    try:
        timestamp = dt.datetime.strptime(f"{match['date']}T{match['h']}:{match['m']}:{match['s']}", ISO)
    except ValueError:
        return None  # e.g. 2025-02-30 or hour 25: not a real time
    return SubbandName(timestamp, int(match["sb"]))


def subband_file_name(timestamp: dt.datetime, subband: int) -> str:
    return f"{timestamp.strftime(ISO)}_sb{subband:02d}.hdf5"


def group_id(timestamp: dt.datetime) -> str:
    return timestamp.strftime(ISO)


def group_time(group: str) -> dt.datetime:
    return dt.datetime.strptime(group, ISO)


def fs_safe(group: str) -> str:
    """The group id without colons (``2025-10-13_13_28_03``)."""
    return group.replace("T", "_").replace(":", "_")


def date_folder(group: str) -> str:
    return group[:10]
