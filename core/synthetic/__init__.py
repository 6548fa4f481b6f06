"""Synthetic data with a known right answer: the planted-teacher dataset, and real speech spoken by TTS.

Modules
-------
spec       what determines a dataset: :class:`SynthSpec` and its named ``SIZES``
teacher    the pretrained model and the teacher with its planted change
sound      the stories' sound: speech-like audio, or real speech clips joined
responses  teacher features to voxel responses (the ``fir`` and ``hrf`` response models)
writing    :func:`generate`: the dataset in ds003020's layout (``python -m core.synth``)
tts        prose spoken by Festival into clips with word times (``python -m core.tts``)
"""

from core.synthetic.responses import canonical_hrf
from core.synthetic.sound import speechlike_audio, story_duration, tr_times
from core.synthetic.spec import GROUPS, SIZES, SynthSpec
from core.synthetic.teacher import load_checkpoint, make_pretrained, wavlm_config
from core.synthetic.writing import generate

__all__ = ["GROUPS", "SIZES", "SynthSpec", "canonical_hrf", "generate", "load_checkpoint", "make_pretrained",
           "speechlike_audio", "story_duration", "tr_times", "wavlm_config"]
