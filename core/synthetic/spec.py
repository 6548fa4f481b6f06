"""What determines a planted-teacher dataset: :class:`SynthSpec`, its named sizes and the stories."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from core.data import dataset as ds
from core.encoding.features import WindowSpec
from core.errors import ConfigError

TEST_STORY = ds.PAPER_TEST[0]


VAL_STORIES = ds.PAPER_VAL


TRAIN_STORY_NAMES = (
    "alternateithicatom", "avatar", "howtodraw", "legacy", "life", "myfirstdaywiththeyankees",
    "naked", "odetostepfather", "souls", "undertheinfluence", "adollshouse", "buck",
    "eyespy", "hangtime", "inamoment", "itsabox", "sloth", "stagefright", "tildeath", "laws",
)


GROUPS = ("AC", "high", "silent")


HRF_FIR = (0.35, 1.0, 0.7, 0.25)  # weights of delays 1..4 TRs (the "fir" response model)


RESPONSE_MODELS = ("fir", "hrf")


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines a planted-teacher dataset."""

    seed: int = 0
    subjects: tuple[str, ...] = ("UTS01", "UTS02")
    n_voxels: int = 240
    n_train_stories: int = 6
    train_trs: int = 70
    val_trs: int = 40
    test_trs: int = 50
    n_repeats: int = 5
    # the "pretrained" model
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 128
    conv_dim: int = 32
    # the truth
    low_layer: int = 1
    high_layer: int = 3
    planted_layers: tuple[int, ...] = (3,)
    planted_rank: int = 2
    planted_scale: float = 4.0
    planted_projections: tuple[str, ...] = ("q_proj", "v_proj")
    readout_rank: int = 8
    noise_sd: tuple[float, float] = (0.3, 0.8)
    fraction_ac: float = 0.25
    fraction_silent: float = 0.15
    fraction_nan: float = 0.03
    sample_rate: int = 16000
    window: dict = field(default_factory=lambda: WindowSpec().as_dict())
    response_model: str = "fir"
    # real networks and real speech: a checkpoint folder ("" = the small random WavLM above,
    # whose sizes then apply), and a folder of 16-kHz wav clips ("" = speech-like sound)
    pretrained: str = ""
    speech: str = ""

    def __post_init__(self):
        if self.response_model not in RESPONSE_MODELS:
            raise ConfigError(f"response_model: one of {', '.join(RESPONSE_MODELS)} (got {self.response_model!r})")

    def stories(self) -> dict[str, int]:
        """Story -> number of (trimmed) response TRs."""
        if self.n_train_stories > len(TRAIN_STORY_NAMES):
            raise ValueError(f"n_train_stories: at most {len(TRAIN_STORY_NAMES)} (got {self.n_train_stories})")
        out = {name: self.train_trs for name in TRAIN_STORY_NAMES[: self.n_train_stories]}
        out.update({name: self.val_trs for name in VAL_STORIES})
        out[TEST_STORY] = self.test_trs
        return out


SIZES = {
    "tiny": SynthSpec(),
    # The default sweep's (search_spaces/demo.yaml): brain-tuning finds the change in ~3 CPU
    # minutes. 1000 training TRs with less noise, a 32-d model, 1-s windows every 1 s (the
    # sweep uses the same windows, so the truth stays exact).
    "demo": SynthSpec(
        n_train_stories=10, train_trs=100, noise_sd=(0.2, 0.5),
        hidden_size=32, num_heads=2, intermediate_size=64, conv_dim=16,
        window=WindowSpec(context=0.75, chunk=0.25, stride=1.0).as_dict(),
    ),
    # The tiny model with 20 training stories of 100 TRs (2000 TRs, about a fifth of one
    # ds003020 subject's): enough data for brain-tuning to find the planted change, which
    # 420 TRs are not (docs/planted_recovery.md).
    "recovery": SynthSpec(n_train_stories=20, train_trs=100),
}


# The demo with a third subject (search_spaces/multi_subject.yaml): tune on one or two
# subjects, then fit readouts for the held-out third one.
SIZES["multi"] = replace(SIZES["demo"], subjects=("UTS01", "UTS02", "UTS03"))
