"""The `danet-deploy` command (and `python -m danet_deploy`).

A thin launcher: the CLI module imports torch, ONNX and ONNX Runtime, which takes seconds; a Ctrl-C in that
time is the same one line and exit code 130 as in any stage, not a traceback of the import (SIGTERM and SIGHUP:
143 and 129).
"""

from __future__ import annotations

import sys

from danet_deploy.signals import install_termination_handlers, interruption


def main() -> None:
    install_termination_handlers()
    try:
        from danet_deploy.cli import main as cli_main
    except KeyboardInterrupt:
        message, code = interruption()
        sys.stderr.write(f"{message}\n")
        sys.exit(code)
    cli_main()


if __name__ == "__main__":
    main()
