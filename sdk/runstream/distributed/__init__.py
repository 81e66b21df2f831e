"""Distributed runs: one run per training job across ranks and nodes (docs/distributed.md).

* ``identity``: who this process is (rank, node, job key) from the launcher's environment, and
  the run id every rank of the job agrees on;
* ``nodedir``: the node directory the ranks of one node share, each rank's run directory in it,
  and the ring size a rank gets;
* ``supervisor``: ``NodeSupervisor``, which makes sure one node sidecar drains the node's rings;
* ``start``: ``init``'s path for a rank (called by ``runstream.session.init``).

Nothing here imports torch (``torch.distributed`` is used only when the user already imported
it), so ``import runstream`` stays light.
"""

from __future__ import annotations

from runstream.distributed.identity import Who, agree_run_id, derived_run_id, detect

__all__ = ["Who", "agree_run_id", "derived_run_id", "detect"]
