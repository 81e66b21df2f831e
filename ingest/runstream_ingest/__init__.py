"""runstream's ingest side: the sidecar that moves records from the ring into the run's journal."""
