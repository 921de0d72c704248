"""The lab database: the embedded PostgreSQL by default, or a configured server.

``open_lab_database()`` gives a ``LabDatabase``: a DataJoint connection with the
object store pointing at the blob root, and the schema names labpipe uses.
"""

from labpipe.db.connect import LabDatabase, open_lab_database
from labpipe.db.target import DatabaseTarget

__all__ = ["DatabaseTarget", "LabDatabase", "open_lab_database"]
