"""rfpp: one-round Reflow (2-rectified flow++) on top of pretrained EDM diffusion models."""

__version__ = "0.1.0"
