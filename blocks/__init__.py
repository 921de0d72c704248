"""Prefect blocks: the configuration users edit in the Prefect UI.

Each block *is* the lib model it configures (multiple inheritance), so its
fields are defined once, in lib/, and a flow hands the block straight to lib
code. ``labpipe up`` registers every block type in this package (each module's
``Block`` subclasses) and saves a ``default`` document of each that has defaults.
Lifecycles add their blocks as modules here (``blocks/<lifecycle>.py``).
"""

from __future__ import annotations

from labpipe.compute import DaskSettings
from labpipe.db.settings import DatabaseSettings
from labpipe.layout import Layout
from prefect.blocks.core import Block


class StorageLayout(Block, Layout):
    """Roots of every kind of data labpipe reads or writes (share, blobs, radio tree, models, ...)."""

    _block_type_name = "labpipe storage layout"
    _block_type_slug = "labpipe-storage-layout"
    _description = "Where labpipe keeps files: one absolute root per kind of data."
    _code_example = """
    from labpipe.blocks import StorageLayout
    layout = StorageLayout.load("BLOCK_NAME")
    print(layout.share)
    """


class LabDatabase(Block, DatabaseSettings):
    """The lab database for DataJoint: a server URL, or empty for the embedded PostgreSQL."""

    _block_type_name = "labpipe lab database"
    _block_type_slug = "labpipe-lab-database"
    _description = "Which PostgreSQL or MySQL/MariaDB server holds the lab's DataJoint schemas."
    _code_example = """
    from labpipe.blocks import LabDatabase
    db = LabDatabase.load("BLOCK_NAME")
    """


class DaskCluster(Block, DaskSettings):
    """The Dask cluster flows fan out on: a scheduler address, or a LocalCluster sized to the host."""

    _block_type_name = "labpipe dask cluster"
    _block_type_slug = "labpipe-dask-cluster"
    _description = "Where Dask work inside flows runs."
    _code_example = """
    from labpipe.blocks import DaskCluster
    cluster = DaskCluster.load("BLOCK_NAME")
    """


__all__ = ["DaskCluster", "LabDatabase", "StorageLayout"]
