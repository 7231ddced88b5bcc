"""Registry of EDM's pretrained snapshots and FID reference statistics, by name.

EDM (Karras et al. 2022) publishes its config-F networks under ``https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/``.
Every one of them is an ``EDMPrecond`` network; the ``-vp`` / ``-ve`` suffix names the *architecture* it was
trained with (``--arch=ddpmpp``, DDPM++, a SongUNet with positional embedding; ``--arch=ncsnpp``, NCSN++, a
SongUNet with Fourier embedding and a residual encoder), not VP/VE preconditioning (EDM's train.py defaults to
``--precond=edm`` and the README's table of the released runs passes no ``--precond``). The ``baseline/`` files
(config A) are the ones with VP/VE preconditioning.

No sha256 is published for these files; ``sha256`` stays None and :func:`rfpp.teachers.download` records the
hash at the first download and checks it at every later use.
"""

from __future__ import annotations

from dataclasses import dataclass

EDM_PRETRAINED_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"
EDM_FID_REFS_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/"


@dataclass(frozen=True)
class TeacherSpec:
    """One downloadable EDM snapshot."""

    name: str
    filename: str
    dataset: str  # cifar10, afhqv2, ffhq, imagenet
    resolution: int
    conditional: bool
    arch: str  # EDM's --arch: ddpmpp | ncsnpp | adm
    precond: str  # EDMPrecond | VPPrecond | VEPrecond
    fid_ref: str  # key of FID_REFS
    sha256: str | None = None
    base_url: str = EDM_PRETRAINED_URL

    @property
    def url(self) -> str:
        return self.base_url + self.filename


@dataclass(frozen=True)
class FidRefSpec:
    """One downloadable set of FID reference statistics (an .npz with ``mu`` and ``sigma``)."""

    name: str
    filename: str
    sha256: str | None = None
    base_url: str = EDM_FID_REFS_URL

    @property
    def url(self) -> str:
        return self.base_url + self.filename


def _edm(name: str, dataset: str, res: int, cond: bool, arch: str, fid_ref: str) -> TeacherSpec:
    kind = "cond" if cond else "uncond"
    suffix = {"ddpmpp": "vp", "ncsnpp": "ve", "adm": "adm"}[arch]
    filename = f"edm-{dataset}-{res}x{res}-{kind}-{suffix}.pkl"
    return TeacherSpec(name, filename, dataset, res, cond, arch, "EDMPrecond", fid_ref)


TEACHERS: dict[str, TeacherSpec] = {
    spec.name: spec
    for spec in [
        _edm("cifar10-uncond-ve", "cifar10", 32, False, "ncsnpp", "cifar10-32x32"),
        _edm("afhqv2-64-uncond-ve", "afhqv2", 64, False, "ncsnpp", "afhqv2-64x64"),
        _edm("ffhq-64-uncond-ve", "ffhq", 64, False, "ncsnpp", "ffhq-64x64"),
        _edm("imagenet-64-cond-adm", "imagenet", 64, True, "adm", "imagenet-64x64"),
        _edm("cifar10-uncond-vp", "cifar10", 32, False, "ddpmpp", "cifar10-32x32"),
        _edm("afhqv2-64-uncond-vp", "afhqv2", 64, False, "ddpmpp", "afhqv2-64x64"),
        _edm("ffhq-64-uncond-vp", "ffhq", 64, False, "ddpmpp", "ffhq-64x64"),
        _edm("cifar10-cond-vp", "cifar10", 32, True, "ddpmpp", "cifar10-32x32"),
        _edm("cifar10-cond-ve", "cifar10", 32, True, "ncsnpp", "cifar10-32x32"),
        # Config A of the EDM paper (Song et al.'s score-SDE networks with VP / VE preconditioning).
        TeacherSpec("baseline-cifar10-uncond-vp", "baseline-cifar10-32x32-uncond-vp.pkl", "cifar10", 32, False,
                    "ddpmpp", "VPPrecond", "cifar10-32x32", base_url=EDM_PRETRAINED_URL + "baseline/"),
        TeacherSpec("baseline-cifar10-uncond-ve", "baseline-cifar10-32x32-uncond-ve.pkl", "cifar10", 32, False,
                    "ncsnpp", "VEPrecond", "cifar10-32x32", base_url=EDM_PRETRAINED_URL + "baseline/"),
    ]
}

FID_REFS: dict[str, FidRefSpec] = {
    spec.name: spec
    for spec in [
        FidRefSpec("cifar10-32x32", "cifar10-32x32.npz"),
        FidRefSpec("afhqv2-64x64", "afhqv2-64x64.npz"),
        FidRefSpec("ffhq-64x64", "ffhq-64x64.npz"),
        FidRefSpec("imagenet-64x64", "imagenet-64x64.npz"),
    ]
}


def teacher_spec(name: str) -> TeacherSpec:
    """The registry entry for `name`, with a clear error listing the known names."""
    try:
        return TEACHERS[name]
    except KeyError:
        raise KeyError(f"unknown teacher {name!r}; known teachers: {', '.join(TEACHERS)}") from None


def fid_ref_spec(name: str) -> FidRefSpec:
    """The FID reference statistics entry for `name`, with a clear error listing the known names."""
    try:
        return FID_REFS[name]
    except KeyError:
        raise KeyError(f"unknown FID reference {name!r}; known: {', '.join(FID_REFS)}") from None
