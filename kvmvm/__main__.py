import sys

try:
    from kvmvm.cli import main
except KeyboardInterrupt:   # Ctrl-C while Python was still starting
    sys.exit(130)
sys.exit(main())
