"""Shared start-up for the absl entry points (train.py, export_tflite.py, ...)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app

from mnv2_tf.errors import UserError

EXIT_USER_ERROR = 2


def run(main: Callable[[list[str]], None]) -> None:
    """Runs `main` under absl; a `UserError` becomes one line on stderr and exit status 2."""

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    app.run(guarded)
