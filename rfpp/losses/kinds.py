"""The loss names a profile chooses among (train.arms.*.loss, train.arms.*.huber_c, train.perceptual), in pure
Python so that rfpp.config checks a profile without importing torch; rfpp.losses and rfpp.train.setup use them."""

KINDS = ("l2", "l2-squared", "pseudo-huber", "lpips", "lpips-huber", "lpips-huber-1/t")
PERCEPTUAL_KINDS = ("lpips", "lpips-huber", "lpips-huber-1/t")
HUBER_KINDS = ("pseudo-huber", "lpips-huber", "lpips-huber-1/t")
HUBER_C_MODES = ("reference", "ict")  # rfpp.losses.pointwise.huber_c
PERCEPTUAL_NETS = ("lpips-vgg16", "lpips-vgg16-maxpool", "digits-classifier")  # rfpp.train.setup.build_perceptual
