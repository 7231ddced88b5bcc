"""The pair-generation names a profile chooses among (pairs.sampler, pairs.dtype), in pure Python so that
rfpp.config checks a profile without importing torch; rfpp.pairs.generator uses them."""

SAMPLERS = ("edm_heun", "rf_heun", "rf_euler")
DTYPES = ("float32", "bfloat16", "float16")  # the teacher's network dtype while it makes pairs
