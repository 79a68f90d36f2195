"""Running the ``ddclip`` command line from tests.

``ddclip`` calls the console script's own entry point (``ddclip_cli.main``) in this process, with its
stdout, stderr, exit status and environment as a subprocess would see them: a subprocess spends ~6 s
importing torch and open_clip per command on these machines, and most tests are about the command, not
the process. ``ddclip_process`` runs a real ``python -m ddclip_cli`` where the process itself is tested
(interpreter start, environment read at import, warnings printed by Python).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock

from ddclip_cli import main

NO_CACHE = {"DDCLIP_CACHE": "/nonexistent-ddclip-cache"}  # tests never find a user's downloaded weights


def ddclip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``ddclip ARGS`` through its entry point in this process."""
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, {**NO_CACHE, **(env or {})}),
        redirect_stdout(out),
        redirect_stderr(err),
        warnings.catch_warnings(),
    ):
        warnings.showwarning = _to_stderr  # as Python prints them, not into pytest's record
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's --help and refusals, or sys.exit(message)
            code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
    return subprocess.CompletedProcess(["ddclip", *args], code or 0, out.getvalue(), err.getvalue())


def _to_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def ddclip_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m ddclip_cli ARGS`` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "ddclip_cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **NO_CACHE, **(env or {})},
    )
