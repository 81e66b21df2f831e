"""What the sidecar records by itself, through its second writer of the run.

companion.py    the companion writer: the sidecar's own records, its own seqs and journal
console.py      the training process's stdout/stderr read from pipes (docs/console.md)
system.py       system metrics sampled every interval (docs/system-metrics.md)
nvml.py         NVIDIA GPUs through NVML, for system.py and environment.py
environment.py  the run's code and environment, recorded once (git, packages, machine)
files.py        the run's ``files/`` kept on the server (docs/files.md)
blob_upload.py  one file's content sent to the server's blob store, resumable
"""
