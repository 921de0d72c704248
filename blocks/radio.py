"""The radio streaming block: grouping tolerance, incomplete-group timeout and policy, staging, recovery."""

from __future__ import annotations

from labpipe.radio.stream import RadioSettings
from prefect.blocks.core import Block


class RadioStreaming(Block, RadioSettings):
    """How DSA-110 subband files are grouped, queued, converted to Measurement Sets and recovered."""

    _block_type_name = "labpipe radio streaming"
    _block_type_slug = "labpipe-radio-streaming"
    _description = (
        "Radio streaming and conversion (DSA-110): files within 60 s form a group; an incomplete group is "
        "converted with its missing subbands flagged or failed after a timeout; tmpfs staging when it has room; "
        "a group whose worker died or went silent goes back to pending."
    )
    _code_example = """
    from labpipe.blocks.radio import RadioStreaming
    radio = RadioStreaming.load("BLOCK_NAME")
    print(radio.tolerance_s, radio.incomplete_policy, radio.staging)
    """


__all__ = ["RadioStreaming"]
