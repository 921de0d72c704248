"""Backup lifecycle (ADAMACS + DSA-110): what borgmatic does for a borg user, as labpipe flows.

Database dumps -> rsync pull of the source roots into the backup host's staging
copy -> ``borg create`` -> restore proof -> ``borg prune`` / ``compact`` ->
``borg check`` -> rclone archive; plus per-directory retention that deletes only
what was archived and verified, and a disk watch with Prometheus gauges and
threshold alarms. Modules:

- ``settings``: the configuration models (the blocks in ``labpipe.blocks.backup`` are these).
- ``proc``: external programs in their own process group, stopped with the run.
- ``borg``: the borg client (create, prune, compact, check, extract, locks) with typed errors.
- ``pull``: rsync of each source root into the staging copy.
- ``dumps``: database dump hooks (lab database, Prefect's database, other state databases).
- ``proof``: restore proof after a backup, and whole-archive restores checked against the archive.
- ``archive``: rclone sync/copy to a remote and ``rclone check``.
- ``retention``: per-directory policies, archive-verify-record-delete.
- ``diskwatch``: free space, tmpfs use, incoming counts, growth rate; alarms and gauges.
- ``schema``: the lifecycle's DataJoint tables; ``report``: run reports.
"""
