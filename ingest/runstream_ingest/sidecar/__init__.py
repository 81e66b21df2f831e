"""The sidecar: one process per training process, started by ``runstream.init``.

Its modules are the stages a record passes through, in order::

    ring_reader.py  1. read published records out of the shared-memory ring, in spans
    batcher.py      2. gather spans into batches, cut by size and by age
    journal.py      3. compress a batch into a frame and append it to the journal (fsync, group commit)
    shipper.py      4. send journal frames to the server over one gRPC stream; acks let segments go

``main.py`` is the process (``python -m runstream_ingest.sidecar.main``): the loop that runs the
stages, the lock that keeps one sidecar per run and the exit when the producer is gone.
``sync.py`` is ``runstream sync``: the shipper run by hand over a finished run directory.
``fsutil.py`` holds the durable-write idioms the journal and shipper use on the file-system seam.

``sources/`` holds what the sidecar records by itself, beside the training process's records:
its companion writer and the capture sources that feed it (console, system metrics, GPUs,
environment, files and their upload).
"""
