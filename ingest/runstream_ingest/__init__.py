"""runstream's two other processes: the sidecar (one per node) and the server.

The path of a record, from ``log()`` to the database, stage by stage::

    training process (runstream)        sidecar (runstream_ingest.sidecar)    server (runstream_ingest.server)
    Run.log ─► RingWriter.push ─► ring ─► ring_reader ─► batcher ─► journal ─► shipper ═gRPC═► ingest_service
                                                                                                  │
                          storage (server.storage: sqlite/) ◄─ commit (group commit) ◄─ decode ◄──┘

``runstream_ingest.sidecar`` and ``runstream_ingest.server`` never import each other; both import the
formats they share from ``runstream.format`` (tests/test_layering.py holds these arrows).
``wire/`` is the gRPC code generated from ``proto/`` (``make proto``).
"""
