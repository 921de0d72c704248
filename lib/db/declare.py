"""Finish PostgreSQL table declarations that a killed process left half done.

On PostgreSQL DataJoint declares a table in several statements, each committed alone: CREATE TABLE, then
CREATE INDEX and one COMMENT ON per column ("post-DDL"). The column comments are where DataJoint keeps an
attribute's type (``:<npy@blobs>: frame starts ...``); a worker killed between CREATE TABLE and its comments
leaves a table whose ``<npy@blobs>`` columns read back as bare ``json``, and every later insert of an array
fails with "Object of type ndarray is not JSON serializable" (the fault campaign found it in
``BehaviorSession``). DataJoint repairs the lineage of such a table on the next declaration pass, not its
comments or indexes, so ``LabDatabase.tables`` calls ``complete_declarations`` under its declaration lock.

Only what is missing is written: a comment on a column (or table) that has none, an index that does not
exist. A column whose comment differs from the code is left alone: that is a schema change, not a kill,
and rewriting it would change how stored values are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_INDEX = re.compile(r'^CREATE (?P<unique>UNIQUE )?INDEX "(?P<name>[^"]+)" ')
LINEAGE_TABLE = "~lineage"
_NAME_BYTES = 63  # PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes

_CATALOG = """
SELECT c.relname, a.attname, col_description(c.oid, a.attnum), obj_description(c.oid, 'pg_class'),
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'f' AND a.attnum = ANY(k.conkey))
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %s AND c.relkind = 'r'
"""


@dataclass
class _Catalog:
    """What one schema holds: column comments, table comments, index names, and the unfinished tables."""

    columns: dict[str, dict[str, str | None]] = field(default_factory=dict)
    table_comments: dict[str, str | None] = field(default_factory=dict)
    indexes: set[str] = field(default_factory=set)
    unfinished: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, connection, schema: str) -> _Catalog:
        found = cls()
        for table, column, comment, table_comment, in_foreign_key in connection.query(_CATALOG, args=(schema,)):
            found.columns.setdefault(table, {})[column] = comment
            found.table_comments[table] = table_comment
            # DataJoint comments every column of a declared table but its foreign keys; its own ~lineage
            # table is made in one statement, without comments
            if not comment and not in_foreign_key and table != LINEAGE_TABLE:
                found.unfinished.add(table)
        rows = connection.query("SELECT indexname FROM pg_indexes WHERE schemaname = %s", args=(schema,))
        found.indexes = {row[0] for row in rows}
        return found


def declared_tables(namespace) -> list:
    """Table objects of a lifecycle's namespace: each table, its part tables and its jobs table."""
    from labpipe.db.connect import datajoint_module

    dj = datajoint_module()
    found = []
    for value in vars(namespace).values():
        if not (isinstance(value, type) and issubclass(value, dj.Table) and value.declaration_context is not None):
            continue
        found.append(value())
        parts = [p for p in vars(value).values() if isinstance(p, type) and issubclass(p, dj.Part)]
        found += [part() for part in parts]
        if hasattr(value, "populate"):
            found.append(value.jobs)
    return found


def missing_post_ddl(table, columns: dict, table_comment: str | None, indexes: set[str]) -> list[str]:
    """The statements of ``table``'s declaration that did not run (``columns``: its column -> comment)."""
    from datajoint.declare import declare

    adapter = table.connection.adapter
    full = table.full_table_name
    *_, post_ddl = declare(full, table.definition, table.declaration_context, adapter, config=table.connection._config)
    bare = [column for column, text in columns.items() if not text]
    uncommented = {f"COMMENT ON COLUMN {full}.{adapter.quote_identifier(column)} IS " for column in bare}
    if not table_comment:
        uncommented.add(f"COMMENT ON TABLE {full} IS ")
    missing = []
    for ddl in post_ddl:
        index = _INDEX.match(ddl)
        if index:
            if index["name"].encode()[:_NAME_BYTES].decode(errors="ignore") not in indexes:
                missing.append(ddl)
        elif not ddl.endswith(" IS ''") and any(ddl.startswith(prefix) for prefix in uncommented):
            missing.append(ddl)  # (an empty comment is stored as none: nothing to finish)
    return missing


def complete_declarations(db, schema: str, namespace) -> list[str]:
    """Run the missing post-DDL of the tables of ``namespace`` in ``schema`` (PostgreSQL); the tables repaired.

    Call it under the database's declaration lock, after the namespace is built. A healthy schema costs two
    catalog queries.
    """
    if db.target.backend != "postgresql":
        return []  # MySQL/MariaDB declare a table, its comments and indexes in one CREATE TABLE
    catalog = _Catalog.read(db.connection, schema)
    if not catalog.unfinished:
        return []
    repaired = []
    for table in declared_tables(namespace):
        name = table.table_name
        if table.database != schema or name not in catalog.unfinished:
            continue
        missing = missing_post_ddl(table, catalog.columns[name], catalog.table_comments[name], catalog.indexes)
        for ddl in missing:
            table.connection.query(ddl)
        if missing:
            table.heading._init_from_database()  # the attribute types, read again from the comments
            repaired.append(table.full_table_name)
    return repaired
