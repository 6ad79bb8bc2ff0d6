"""The operator's command line (``attest-hub``): one module per command group, and the demo.

See README.md in this folder for what the package owns and what it may import.
"""

from hub.cli.main import main

__all__ = ["main"]
