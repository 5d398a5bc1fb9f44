"""Snapshots of running microVMs: the on-disk format (format.py), saving and restoring a
Machine (persist.py) and forking one into copy-on-write children (fork.py).

The format is written down in docs/snapshot-format.md. Machine.pause/resume/snapshot/
restore/fork are the verbs programs use; this package does their work.
"""

from kvmvm.snapshot.format import Snapshot, SnapshotError

__all__ = ["Snapshot", "SnapshotError"]
