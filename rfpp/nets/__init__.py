"""EDM-compatible networks (SongUNet, DhariwalUNet), EDM preconditioning and its velocity form."""

from rfpp.nets.dhariwal import DhariwalUNet
from rfpp.nets.precond import EDMDenoiser, EDMVelocity
from rfpp.nets.songunet import SongUNet

ARCHITECTURES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


def build_network(arch: str, **kwargs):
    """Construct an EDM-compatible network by class name with EDM's constructor keyword arguments."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)


__all__ = ["ARCHITECTURES", "DhariwalUNet", "EDMDenoiser", "EDMVelocity", "SongUNet", "build_network"]
