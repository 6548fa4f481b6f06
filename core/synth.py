"""``python -m core.synth``: write a planted-teacher dataset, the command of :mod:`core.synthetic.writing`."""
from core.cli import run
from core.synthetic.writing import main
if __name__ == "__main__":
    raise SystemExit(run(main))
