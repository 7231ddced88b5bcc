"""Evaluation: the digits feature network, few-step sampling and sample files, FID through torch-fidelity.

- `load_feature_net(path)` / `train_classifier` / `save_feature_net`: the digits classifier (perceptual network of
  the LPIPS-style loss and FID's stand-in feature extractor; rfpp.eval.digits_classifier).
- `rfpp.eval.generate`: `load_student`, `generate`, `write_samples`, `read_samples`, `merge_shards`,
  `invert_and_decode`.
- `rfpp.eval.fid`: `feature_net_spec`, `evaluate_images`, `check_comparable` (imports torch-fidelity).
"""

from rfpp.eval.digits_classifier import (
    NAME as DIGITS_CLASSIFIER,
)
from rfpp.eval.digits_classifier import (
    STAND_IN_NOTE,
    DigitsClassifier,
    load_feature_net,
    save_feature_net,
    train_classifier,
)

__all__ = [
    "DIGITS_CLASSIFIER",
    "STAND_IN_NOTE",
    "DigitsClassifier",
    "load_feature_net",
    "save_feature_net",
    "train_classifier",
]
