"""The evaluation names a profile chooses among (sample.format, eval.feature_net), in pure Python so that
rfpp.config checks a profile without importing torch; rfpp.eval.generate and rfpp.eval.fid use them."""

FORMATS = ("npz", "png", "zip")  # how samples are written: one .npz, a PNG folder, an EDM dataset zip
FEATURE_NETS = ("inception", "digits-classifier")  # torch-fidelity's inception-v3-compat, or the digits stand-in
