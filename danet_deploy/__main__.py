"""The `danet-deploy` command (and `python -m danet_deploy`).

A thin launcher: the CLI module imports torch, ONNX and ONNX Runtime, which takes seconds; a Ctrl-C in that
time is the same one line and exit code 130 as in any stage, not a traceback of the import.
"""

from __future__ import annotations

import sys

from danet_deploy.errors import EXIT_INTERRUPTED, INTERRUPTED


def main() -> None:
    try:
        from danet_deploy.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write(f"{INTERRUPTED}\n")
        sys.exit(EXIT_INTERRUPTED)
    cli_main()


if __name__ == "__main__":
    main()
