"""DataJoint tables of the MEI loop (schema ``<prefix>_mei``), declared per database.

Stimuli: a ``StimulusSet`` (natural images or MEIs, as exported to a rig's stimulus
folder) and its ``Stimulus`` rows with stable, content-derived ids. Recordings: a
``ScanStimuli`` row links an ingested scan (``ingest.Scan``) to what it showed, in
trial order, with the responses of its units; ``Shown`` lists the stimuli, so "which
scans showed MEI X" is a join. Models: ``Twin`` (a published twin, the scans it was
trained on, held-out correlation per unit) and ``MeiRun`` (candidates per unit and
seed, their scores, the chosen one), with ``MeiStimulus`` tying an exported stimulus
back to the candidate it came from.
"""

from __future__ import annotations

from types import SimpleNamespace

from labpipe.db.connect import LabDatabase, datajoint_module
from labpipe.ingest.schema import tables as ingest_tables

STIMULUS_KINDS = ("natural", "mei")


def _build(schema, ingest) -> SimpleNamespace:
    dj = datajoint_module()
    Subject, Scan = ingest.Subject, ingest.Scan  # noqa: F841 - referenced by name in the definitions

    @schema
    class StimulusSet(dj.Manual):
        """A set of images exported to a rig. Attributes: set_id, kind, folder, images (n, size, size)."""

        definition = f"""
        set_id : varchar(32)
        ---
        kind : enum({", ".join(repr(k) for k in STIMULUS_KINDS)})
        folder : varchar(1023)         # where the rig reads it
        created : datetime
        n_stimuli : int32
        image_size : int32
        norm : float32                 # L2 norm of every image (contrast budget)
        images : <npy@blobs>           # (n, size, size) float32 in set order
        model_id = '' : varchar(16)    # the twin that generated it (MEI sets)
        """

    @schema
    class Stimulus(dj.Manual):
        """One image with a stable id (a hash of its pixels). Attributes: stimulus_id, set_index, sha256."""

        definition = """
        stimulus_id : varchar(32)
        ---
        -> StimulusSet
        set_index : int32
        sha256 : char(64)
        """

    @schema
    class Unit(dj.Manual):
        """A recorded neuron of an animal, matched across scans. Attributes: unit_id."""

        definition = """
        -> Subject
        unit_id : varchar(32)
        """

    @schema
    class ScanStimuli(dj.Manual):
        """What an ingested scan showed, trial by trial, and its units' responses."""

        definition = """
        -> Scan
        ---
        stimulus_file : varchar(255)   # the scan's stimuli manifest, relative to the scan folder
        n_trials : int32
        n_units : int32
        trial_stimuli : <npy@blobs>    # (trials,) stimulus ids in presentation order
        responses : <npy@blobs>        # (trials, units) response per presentation
        linked : datetime
        """

        class Shown(dj.Part):
            """A stimulus shown in the scan. Attributes: repeats."""

            definition = """
            -> master
            -> Stimulus
            ---
            repeats : int32
            """

        class Recorded(dj.Part):
            """A unit recorded in the scan. Attributes: column of ``responses``."""

            definition = """
            -> master
            -> Unit
            ---
            response_column : int32
            """

    @schema
    class LinkFailure(dj.Manual):
        """A scan whose stimuli could not be linked, and why (retried on the next link run)."""

        definition = """
        -> Scan
        ---
        reason : varchar(2000)
        failed : datetime
        """

    @schema
    class Twin(dj.Manual):
        """A twin published to the registry. Attributes: model_id, room, heldout_corr (median over units)."""

        definition = """
        model_id : varchar(16)
        ---
        -> Subject
        room : varchar(64)
        trained : datetime
        n_trials : int32
        n_units : int32
        dataset_hash : char(16)
        epochs : int32
        final_loss : float32
        heldout_corr : float32
        member : int32                 # index in its ensemble
        ensemble : varchar(64)         # ensemble id: the members trained on the same data
        """

        class TrainedOn(dj.Part):
            """A scan whose trials the twin was trained on."""

            definition = """
            -> master
            -> ScanStimuli
            """

        class UnitFit(dj.Part):
            """Held-out correlation of one unit's prediction with its recorded responses."""

            definition = """
            -> master
            -> Unit
            ---
            heldout_corr : float32
            """

    @schema
    class MeiRun(dj.Manual):
        """One generation of MEIs: generating twins (the first is the key's ``Twin``), scorers, settings."""

        definition = """
        mei_run : char(16)
        ---
        -> Twin
        generators : varchar(255)      # model ids of the generating ensemble (comma-separated)
        scorers : varchar(255)         # model ids that scored the candidates (comma-separated)
        config : varchar(2000)         # MeiConfig as JSON
        created : datetime
        """

        class Candidate(dj.Part):
            """One MEI candidate of one unit from one seed."""

            definition = """
            -> master
            -> Unit
            seed : int32
            ---
            image : <npy@blobs>        # (size, size) float32
            predicted : float32        # generating ensemble's mean predicted response
            score : float32            # mean predicted response of the scorers
            chosen : bool              # the best-scored candidate of its unit
            """

    @schema
    class MeiStimulus(dj.Manual):
        """An exported stimulus made from an MEI candidate."""

        definition = """
        -> Stimulus
        ---
        -> MeiRun.Candidate
        """

    return SimpleNamespace(
        schema=schema,
        StimulusSet=StimulusSet,
        Stimulus=Stimulus,
        Unit=Unit,
        ScanStimuli=ScanStimuli,
        LinkFailure=LinkFailure,
        Twin=Twin,
        MeiRun=MeiRun,
        MeiStimulus=MeiStimulus,
        ingest=ingest,
    )


def tables(db: LabDatabase) -> SimpleNamespace:
    """The MEI tables on ``db`` (declared on first use, after the ingest tables they refer to)."""
    ingest = ingest_tables(db)
    return db.tables("mei", lambda schema: _build(schema, ingest))


def as_array(value):
    """An ``<npy@blobs>`` value as a numpy array (DataJoint may hand back a lazy reference)."""
    import numpy as np

    return np.asarray(value.load() if hasattr(value, "load") else value)
