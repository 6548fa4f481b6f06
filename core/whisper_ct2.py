"""``python -m core.whisper_ct2``: convert a CTranslate2 Whisper, the command of :mod:`core.backbones.whisper_ct2` under its old name."""
from core.backbones.whisper_ct2 import main
from core.cli import run
if __name__ == "__main__":
    raise SystemExit(run(main))
