"""The SQLite backend of ``Storage`` (docs/storage.md): ``backend.py`` (connections, transactions,
run lifecycle), ``schema.py``, ``ingest.py`` (storing batches), ``read.py``, ``query.py`` and
``sql.py`` (the runs table's filters as SQL)."""
