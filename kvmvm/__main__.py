import sys

try:
    from kvmvm.cli import entry
except KeyboardInterrupt:   # Ctrl-C while Python was still starting
    sys.exit(130)
entry()
