import sys

from kvmvm.cli import main

sys.exit(main())
