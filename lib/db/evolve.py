"""Bring a table an older labpipe declared up to its current definition, when it is opened.

DataJoint declares a table once: a definition changed in a later release does not reach a table that already
exists, and inserts of what the new definition allows then fail on old databases. A lifecycle's ``_build`` calls
these on its table classes (``LabDatabase.tables`` runs it under the server lock, so two workers starting at
once do not both alter). Each is idempotent, and works on PostgreSQL (embedded or server) and MariaDB.
(DataJoint 2.3.5's ``Table.alter`` writes MySQL's ``MODIFY`` on PostgreSQL too, so not through it.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def add_attributes(table, added: Mapping[str, str]) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for the attributes of ``added`` (name -> SQL column type) the table lacks."""
    missing = {name: ddl for name, ddl in added.items() if name not in table.heading.names}
    if not missing:
        return
    connection = table.connection
    for name, ddl in missing.items():
        column = connection.adapter.quote_identifier(name)
        connection.query(f"ALTER TABLE {table.full_table_name} ADD COLUMN {column} {ddl}")
    _reload_heading(table)


def widen_enum(table, attribute: str, values: Sequence[str]) -> None:
    """Let the enum ``attribute`` take every one of ``values``; the values it has keep their order, none is lost.

    On PostgreSQL the column moves to the enum type DataJoint declares for the widened list (the old type stays,
    other tables may use it); on MariaDB the column is modified in place, keeping its NULL and default. The
    column comment DataJoint reads the declared type from (``:enum(...):``) is rewritten to match.
    """
    connection = table.connection
    postgres = connection.adapter.backend == "postgresql"
    current, column_sql = (_postgres_enum if postgres else _mariadb_enum)(table, attribute)
    missing = [v for v in values if v not in current]
    if not missing:
        return
    enum = "enum(" + ", ".join(f"'{v}'" for v in [*current, *missing]) + ")"
    comment = f":{enum}:{table.heading.attributes[attribute].comment}"
    column = connection.adapter.quote_identifier(attribute)
    name = table.full_table_name
    if postgres:
        type_ref = connection.adapter.core_type_to_sql(enum).format(database=table.database)
        for create in connection.adapter.get_pending_enum_ddl(table.database):
            if connection.query("SELECT to_regtype(%s)", args=(type_ref,)).fetchone()[0] is None:
                connection.query(create)
        connection.query(f"ALTER TABLE {name} ALTER COLUMN {column} TYPE {type_ref} USING {column}::text::{type_ref}")
        connection.query(f"COMMENT ON COLUMN {name}.{column} IS %s", args=(comment,))
    else:
        connection.query(f"ALTER TABLE {name} MODIFY {column} {enum} {column_sql} COMMENT %s", args=(comment,))
    _reload_heading(table)


def _postgres_enum(table, attribute: str) -> tuple[list[str], str]:
    sql = (
        "SELECT e.enumlabel FROM pg_attribute a JOIN pg_enum e ON e.enumtypid = a.atttypid "
        "WHERE a.attrelid = %s::regclass AND a.attname = %s ORDER BY e.enumsortorder"
    )
    rows = table.connection.query(sql, args=(table.full_table_name, attribute)).fetchall()
    return [row[0] for row in rows], ""


def _mariadb_enum(table, attribute: str) -> tuple[list[str], str]:
    """The enum's values, and its NULL and DEFAULT clauses (MODIFY restates the whole column)."""
    sql = (
        "SELECT column_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s AND column_name = %s"
    )
    column_type, nullable, default = table.connection.query(
        sql, args=(table.database, table.table_name, attribute)
    ).fetchone()
    values = [v.strip("'") for v in column_type[len("enum(") : -1].split(",")]
    clauses = "NULL" if nullable == "YES" else "NOT NULL"
    if default is not None:  # MariaDB gives it quoted: 'ms', or NULL
        clauses += f" DEFAULT {default}"
    return values, clauses


def _reload_heading(table) -> None:
    from datajoint.heading import Heading

    table._heading = Heading(table_info=table.heading.table_info)
