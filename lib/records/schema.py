"""Subject tables (``<prefix>_subject``): animals, their surgeries and cages, as PyRAT records them.

An ``Animal`` is keyed by its ear tag or id, the ANIMALID token of the session folders,
so ``ingest.Subject * subject.Animal`` joins sessions to animal records; PyRAT may know an
animal before its first session, so there is no foreign key between them.
"""

from __future__ import annotations

from types import SimpleNamespace

from labpipe.db.connect import LabDatabase, datajoint_module


def _build(schema) -> SimpleNamespace:
    dj = datajoint_module()

    @schema
    class Cage(dj.Manual):
        """A cage as PyRAT names it. Attributes: cage, cage_type, room, rack."""

        definition = """
        cage : varchar(32)
        ---
        cage_type = '' : varchar(64)
        room = '' : varchar(64)
        rack = '' : varchar(64)
        """

    @schema
    class Animal(dj.Manual):
        """An animal from PyRAT. Attributes: sex, birth date, strain, owner, licence, state, current cage."""

        definition = """
        animal_id : varchar(32)       # ear tag or id, as in the session folder names
        ---
        pyrat_id : int64
        lab_id = '' : varchar(64)
        sex : enum('m', 'f', 'u')
        birth_date = null : date
        sacrificed = null : date
        state = '' : varchar(32)
        species = '' : varchar(64)
        strain = '' : varchar(255)
        owner = '' : varchar(128)
        responsible = '' : varchar(128)
        licence = '' : varchar(64)
        -> [nullable] Cage
        """

        class Surgery(dj.Part):
            """A procedure PyRAT records for the animal (window implant, virus injection, ...)."""

            definition = """
            -> master
            surgery_no : int32
            ---
            procedure : varchar(255)
            surgery_date = null : date
            comment = '' : varchar(2000)
            """

    return SimpleNamespace(schema=schema, Cage=Cage, Animal=Animal)


def tables(db: LabDatabase) -> SimpleNamespace:
    """The subject tables on ``db`` (declared on first use)."""
    return db.tables("subject", _build)
