"""The training names a profile chooses among (train.precision, train.nonfinite, train.arms.*.init), in pure
Python so that rfpp.config checks a profile without importing torch; rfpp.train.loop and .setup act on them."""

PRECISIONS = ("fp32", "bf16", "fp16")  # fp32, or autocast to bfloat16 / float16 (with a GradScaler)
NONFINITE = ("stop", "skip")  # a NaN/inf loss stops the run, or its update is skipped and counted
INITS = ("teacher", "scratch")  # the student starts from the teacher's weights, or from a fresh initialisation
