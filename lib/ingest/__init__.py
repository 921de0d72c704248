"""The ADAMACS ingest lifecycle: share folders -> DataJoint sessions, scans, files and tasks."""
