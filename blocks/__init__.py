"""Prefect blocks: the configuration users edit in the Prefect UI.

Each block *is* the lib model it configures (multiple inheritance), so its
fields are defined once, in lib/, and a flow hands the block straight to lib
code. ``labpipe up`` registers every block type in this package (each module's
``Block`` subclasses) and saves a ``default`` document of each that has defaults.
Lifecycles add their blocks as modules here (``blocks/<lifecycle>.py``), each with
its loaders beside it: a function that resolves a block name to the lib settings
(``blocks/resolve.py`` says when the built-in defaults may stand in). The loaders of
what every lifecycle shares (layout, lab database, Dask cluster) are here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labpipe.blocks.resolve import resolve
from labpipe.compute import DaskSettings
from labpipe.config import get_settings
from labpipe.db.settings import DatabaseSettings
from labpipe.layout import Layout
from prefect.blocks.core import Block

if TYPE_CHECKING:
    from labpipe.db.connect import LabDatabase as OpenLabDatabase


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


def layout(name: str | None = "default") -> Layout:
    """The storage roots of ``StorageLayout`` document ``name`` (built-in: under ``$LABPIPE_HOME``)."""
    return resolve(StorageLayout, name, Layout.default(get_settings().home))


def database_settings(name: str | None = "default") -> DatabaseSettings:
    """The ``LabDatabase`` document ``name`` (built-in: ``LABPIPE_DATABASE_URL``, else the embedded server)."""
    settings = get_settings()
    return resolve(LabDatabase, name, DatabaseSettings(url=settings.database_url, schema_prefix=settings.schema_prefix))


def lab_database(db: str | None = "default", layout_name: str | None = "default") -> OpenLabDatabase:
    """The lab database opened, its object store at the layout's blob root."""
    from labpipe.db.connect import open_lab_database

    return open_lab_database(database_settings(db), blobs=layout(layout_name).blobs)


def dask_settings(name: str | None = "default") -> DaskSettings:
    """The ``DaskCluster`` document ``name`` (built-in: ``LABPIPE_DASK_ADDRESS``, else a local cluster)."""
    return resolve(DaskCluster, name, DaskSettings(address=get_settings().dask_address))


__all__ = ["DaskCluster", "LabDatabase", "StorageLayout", "dask_settings", "database_settings", "lab_database",
           "layout"]  # fmt: skip
