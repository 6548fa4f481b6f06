"""``python -m core.baseline``: the frozen-feature ridge baseline, the command of :mod:`core.encoding.baseline` under its old name."""
from core.cli import run
from core.encoding.baseline import main
if __name__ == "__main__":
    raise SystemExit(run(main))
