"""The defaults every entry point shares: the CLI's flags, ``avss run``'s config and the library's own
arguments read them here, so a command and the run cannot disagree (the bench used to time 3 + 10 x 1
generations from the CLI and 2 + 5 x 2 in a run; ``verify --provider`` defaulted to cpu, the rest to auto).
Plain values only: the CLI reads this module while it builds ``avss --help``."""
from __future__ import annotations

RATIO = 0.25  # the cut when none is given: round-half-up(RATIO x layers) layers
PROVIDER = "auto"  # ONNX Runtime provider: CUDA when its runtime works here, else CPU (cuda never falls back)
# the bench: batch, prompt and decode lengths; untimed and timed generations per model and round; rounds
# measured alternately (full, slim, full, slim) in fresh processes, so a noisy machine hits both alike
BENCH = {"batch_size": 1, "prompt_len": 128, "new_tokens": 32, "warmup": 2, "runs": 5, "rounds": 2}
