"""History as column chunks (docs/storage.md): rows into per-key columns (``columns.py``), columns
into checksummed compressed chunks with their statistics (``chunks.py``, ``chunk_cells.py``), and
back out as arrays (``chunk_arrays.py``) and downsampled series (``series.py``)."""
