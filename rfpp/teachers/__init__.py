"""Teachers: EDM's pretrained snapshots by name, resumable checksummed downloads, and safe loading.

- ``TEACHERS`` / ``FID_REFS``: registries of EDM's snapshot and FID-statistics URLs.
- ``download(url, dest_dir="resources", filename=None, progress=True, expected_sha256=None) -> Path``.
- ``load_edm_snapshot(path_or_url) -> EDMDenoiser``: an EDM ``.pkl`` without executing anything from it.
- ``load_state_dict_teacher(path, arch, config) -> EDMDenoiser``: a plain state dict of EDMPrecond's ``model``.
"""

from rfpp.teachers.denoisers import VEDenoiser, VPDenoiser
from rfpp.teachers.download import ChecksumError, DownloadError, download, sha256_file
from rfpp.teachers.edm import SUPPORTED_PRECONDS, TeacherLoadError, load_edm_snapshot, load_state_dict_teacher
from rfpp.teachers.registry import FID_REFS, TEACHERS, FidRefSpec, TeacherSpec, fid_ref_spec, teacher_spec
from rfpp.teachers.safe_pickle import UnsafePickleError

__all__ = [
    "FID_REFS",
    "SUPPORTED_PRECONDS",
    "TEACHERS",
    "ChecksumError",
    "DownloadError",
    "FidRefSpec",
    "TeacherLoadError",
    "TeacherSpec",
    "UnsafePickleError",
    "VEDenoiser",
    "VPDenoiser",
    "download",
    "fid_ref_spec",
    "load_edm_snapshot",
    "load_state_dict_teacher",
    "sha256_file",
    "teacher_spec",
]
