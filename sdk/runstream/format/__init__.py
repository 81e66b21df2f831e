"""The shared kernel: byte formats and their meaning, used by the SDK, the sidecar and the server.

Nothing here starts a process, opens a socket or holds a policy; each module is the code of one
format, and its document in ``docs/`` is the reference (grammar, byte diagram, worked example)::

    record.py        a record: header, kinds, msgpack body       docs/ring-format.md, "Records"
    ring_layout.py   the shared-memory ring's control block       docs/ring-format.md
    frame.py         a journal frame and segment names            docs/journal-format.md
    journal_read.py  reading frames back, damage skipped          docs/journal-format.md, "Reading"
    fold.py          records folded into a run's state            docs/run-dir.md, "Reading a run"
    console_lines.py console bytes into stored lines              docs/console.md
    api_key.py       the API-key format, checkable offline        docs/auth.md
    atomic.py        durable small-file writes (temp, fsync, rename, fsync dir)
    fs.py            the file-system seam the journal is written and read through (tests fail it)

Who imports it: the SDK (``runstream``), the sidecar (``runstream_ingest.sidecar``) and the server
(``runstream_ingest.server``).  It imports nothing of them (tests/test_layering.py holds this).
"""
