"""Interoperation with the paper's code and the wider ecosystem: import its released checkpoints, teachers,
training states and EDM pickles as rfpp model files; import its pair sets (samples.zip + z.zip PCG64 states);
export rfpp students to its format and to safetensors. Formats: docs/interop.md."""

from rfpp.lazy import exports, names

_IMPORTS = {
    "reference_models": ("NetConfig", "NetConfigError", "ReferenceFormatError", "import_model", "load_network",
                         "read_net_config", "read_weights", "reference_config_dict"),
    "model_files": ("as_model_file", "is_rfpp_model"),
    "export": ("export_model",),
    "pairs_import": ("check_pair_source", "import_pairs", "read_archive"),
}
__all__ = names(_IMPORTS)
__getattr__ = exports(__name__, _IMPORTS)
