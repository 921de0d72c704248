"""The radio tables (``labpipe.radio.schema``): an older database gains the columns a newer labpipe needs."""

from __future__ import annotations

from labpipe.radio.schema import tables


def test_tables_declared_before_claim_tokens_gain_them(lab_db):
    from labpipe.db.connect import LabDatabase

    t = tables(lab_db)
    for table, column in ((t.SubbandGroup, "claim"), (t.ConversionAttempt, "token")):
        lab_db.connection.query(f"ALTER TABLE {table.full_table_name} DROP COLUMN {column}")
    later = LabDatabase(lab_db.target, lab_db.blobs, lab_db.prefix)  # a newer labpipe opening the old schema
    upgraded = tables(later)
    assert "claim" in upgraded.SubbandGroup.heading.names
    assert "token" in upgraded.ConversionAttempt.heading.names
