"""``python -m core.tts``: prose spoken by Festival, the command of :mod:`core.synthetic.tts` under its old name."""
from core.cli import run
from core.synthetic.tts import main
if __name__ == "__main__":
    raise SystemExit(run(main))
