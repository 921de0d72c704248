"""The radio streaming block: grouping tolerance, incomplete-group timeout and policy, staging, recovery."""

from __future__ import annotations

from labpipe.blocks.resolve import resolve
from labpipe.radio.stream import RadioSettings
from labpipe.radio.tree import RadioTree
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


def radio_settings(name: str | None = "default") -> RadioSettings:
    """The ``RadioStreaming`` document ``name``, or the built-in defaults."""
    return resolve(RadioStreaming, name, RadioSettings())


def radio_tree(layout_name: str | None = "default") -> RadioTree:
    """The radio tree under the ``StorageLayout`` document's radio root, its folders made."""
    from labpipe.blocks import layout

    return RadioTree(layout(layout_name).radio).ensure()


__all__ = ["RadioStreaming", "radio_settings", "radio_tree"]
