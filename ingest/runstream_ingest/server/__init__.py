"""``runstream server``: gRPC ingest, the HTTP API, API keys and the dashboard over one database.

Its modules continue the path of a record from the sidecar's shipper, in order::

    ingest_service.py  1. one gRPC stream per run writer: Open, then Batch -> Ack (docs/protocol.md)
    decode.py          2. a received batch verified and decoded into columns (docs/batch-format.md)
    commit.py          3. the storage's one writer thread: batches from all streams, group commit
    storage/           4. the Storage interface and its backends (docs/storage.md):
                          interface.py, history/ (column chunks, downsampling), sqlite/, filters.py

and serve it back: ``http/`` (the read API, files, live updates; docs/http-api.md), ``auth/`` (API
keys, their checks, browser sessions; docs/auth.md) and ``web/`` (the dashboard's static files).
``main.py`` runs them all on one event loop; ``args.py`` holds its command-line arguments.
"""
