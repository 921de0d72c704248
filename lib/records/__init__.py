"""Lab records outside labpipe: animals, surgeries and cages from PyRAT; ingest summaries to RSpace notebooks."""
