"""Host-side networking helpers for VMs: passt for `--net user` (passt.py)."""
