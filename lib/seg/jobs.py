"""The job states users see, from Prefect's run states.

queued -> running -> previewing -> completed | failed | canceled, as the
CryoMamba job lifecycle names them. The flow names its Running state
``Queued`` while it waits for a GPU slot and ``Previewing`` once previews
appear; everything else follows from Prefect's state type.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PREVIEWING = "previewing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "canceled"  # the seed's spelling, as the service API reports it


RUNNING_NAMES = {"Queued": JobState.QUEUED, "Previewing": JobState.PREVIEWING}
BY_TYPE = {
    "SCHEDULED": JobState.QUEUED,
    "PENDING": JobState.QUEUED,
    "PAUSED": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "CRASHED": JobState.FAILED,
    "CANCELLING": JobState.CANCELLED,
    "CANCELLED": JobState.CANCELLED,
}


def job_state(state_type: str, state_name: str | None = None) -> JobState:
    """The job state of a Prefect state (type like ``RUNNING`` or ``StateType.RUNNING``, and its name)."""
    kind = str(state_type).rsplit(".", 1)[-1].upper()
    if kind == "RUNNING" and state_name in RUNNING_NAMES:
        return RUNNING_NAMES[state_name]
    return BY_TYPE.get(kind, JobState.FAILED)
