"""``runstream server``: gRPC ingest, the HTTP API and API keys over one SQLite database."""
