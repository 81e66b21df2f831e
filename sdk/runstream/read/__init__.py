"""Reading runs back: from a run directory on this machine (``local.py``: ``read_run``,
``runstream inspect``) and from a server (``api.py``, ``api_runs.py``: ``runstream.Api``)."""
