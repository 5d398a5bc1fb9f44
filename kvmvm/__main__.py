from kvmvm.cli import entry

entry()
