"""The Python sandbox API: `from kvmvm import Sandbox` (docs/sandbox.md).

Sandbox (sandbox.py) holds one VM (vm.py: cold boot or warm restore) and its agent
connection (channel.py); sb.commands (commands.py) and sb.files (files.py) use it.
"""

from kvmvm.sandbox.commands import CommandHandle, CommandResult
from kvmvm.sandbox.files import EntryInfo
from kvmvm.sandbox.sandbox import Sandbox

__all__ = ["Sandbox", "CommandResult", "CommandHandle", "EntryInfo"]
