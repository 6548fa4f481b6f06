"""``python -m core.check``: check a dataset folder, the command of :mod:`core.data.check` under its old name."""
from core.cli import run
from core.data.check import main
if __name__ == "__main__":
    raise SystemExit(run(main))
