"""Evaluation: the digits feature network, few-step sampling and sample files, FID through torch-fidelity.

- `load_feature_net(path)` / `train_classifier` / `save_feature_net`: the digits classifier (perceptual network of
  the LPIPS-style loss and FID's stand-in feature extractor; rfpp.eval.digits_classifier).
- `rfpp.eval.generate`: `load_student`, `generate`, `write_samples`, `read_samples`, `merge_shards`,
  `invert_and_decode`.
- `rfpp.eval.fid`: `feature_net_spec`, `evaluate_images`, `check_comparable` (imports torch-fidelity).
- the stages the CLI calls: `rfpp.eval.stage` (`run_sample`, `run_inversion`, `run_fid`, `run_report`) and
  `rfpp.eval.features_stage` (`run_features`).
"""

from rfpp.lazy import exports, names

_IMPORTS = {
    "digits_classifier": ["STAND_IN_NOTE", "DigitsClassifier", "load_feature_net", "save_feature_net",
                          "train_classifier"],
}
__all__ = names(_IMPORTS)
__getattr__ = exports(__name__, _IMPORTS)  # on first use: rfpp.eval.kinds loads without torch
