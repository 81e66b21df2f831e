"""The ``runstream`` command (``main.py``) and its commands that live in the SDK (``restore.py``).

``runstream server`` and ``runstream sync`` load the server and the sidecar's shipper only when
they run, so ``import runstream`` never loads them.
"""
