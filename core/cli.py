"""What every ``python -m core.*`` command shares: one-line errors and quiet libraries."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from core.errors import BrainsweepError


def quiet_libraries() -> None:
    """Keep transformers' load reports and progress bars out of our progress output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("himalaya").setLevel(logging.WARNING)
    if "transformers" not in sys.modules:
        # transformers reads these when it loads: importing it here (2-10 s) would make
        # every command's --help that slow.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def progress(message: str) -> None:
    """Progress goes to stderr so that stdout stays parseable."""
    print(message, file=sys.stderr, flush=True)


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a command's ``main``; a :class:`BrainsweepError` becomes one line on stderr and exit 2."""
    quiet_libraries()
    try:
        return main(argv)
    except BrainsweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
