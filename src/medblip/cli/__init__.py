"""Command line interface: ``medblip`` / ``python -m medblip``."""

from __future__ import annotations

import sys

from medblip.cli.app import app
from medblip.errors import MedblipError

# Importing the command modules registers their commands on ``app``.
from medblip.cli import data_cmd  # noqa: E402,F401  isort: skip
from medblip.cli import synth_cmd  # noqa: E402,F401  isort: skip
from medblip.cli import report_cmd  # noqa: E402,F401  isort: skip
from medblip.cli import model_cmd  # noqa: E402,F401  isort: skip
from medblip.cli import score_cmd  # noqa: E402,F401  isort: skip
from medblip.cli import evaluate_cmd  # noqa: E402,F401  isort: skip
from medblip.cli import train_cmd  # noqa: E402,F401  isort: skip
from medblip.cli import explain_cmd  # noqa: E402,F401  isort: skip
from medblip.cli import cache_cmd  # noqa: E402,F401  isort: skip
from medblip.cli import experiment_cmd  # noqa: E402,F401  isort: skip
from medblip.cli import caption_cmd  # noqa: E402,F401  isort: skip
from medblip.cli import export_cmd  # noqa: E402,F401  isort: skip
from medblip.cli import serve_cmd  # noqa: E402,F401  isort: skip


def main() -> None:
    from medblip.progress import library_progress

    # Every command's --no-progress also silences the libraries' bars (transformers' "Loading weights").
    try:
        with library_progress("--no-progress" not in sys.argv[1:]):
            app()
    except MedblipError as exc:
        print(f"medblip: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        # A file or folder the system refused (permissions, a full disk, a read-only mount) is the
        # user's to fix; anything else is a bug and keeps its traceback.
        if exc.filename is None:
            raise
        print(f"medblip: error: {exc.filename}: {exc.strerror or exc}; check the path and its permissions "
              "(or free disk space)", file=sys.stderr)
        sys.exit(2)
