"""`rfpp import model`, `rfpp import pairs`, `rfpp export model`: the paper's files in, rfpp's students out.

Argument parsing only; the work is rfpp.interop's (formats: docs/interop.md). Exit codes: 0 done, 1 a file that
cannot be used (its keys or shapes do not fit the configuration, a z.zip entry without its image, a state record
of the wrong size, …), 2 bad usage (a configuration JSON of another architecture, an unknown format).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from cli.common import EXIT_FAILURE, EXIT_USAGE, fail

import_app = typer.Typer(no_args_is_help=True, help="Import the paper's checkpoints, teachers, training states, EDM "
                                                    "pickles and pair sets.")
export_app = typer.Typer(no_args_is_help=True, help="Export an rfpp model file to the paper's format or safetensors.")


@contextmanager
def _reported() -> Iterator[None]:
    """Library errors as one line: a configuration of another architecture exits 2, an unusable file 1."""
    from rfpp.checkpoints import CheckpointError
    from rfpp.interop import NetConfigError
    from rfpp.pairs import PairSetError
    from rfpp.provenance import LockedError
    from rfpp.teachers import TeacherLoadError, UnsafePickleError

    try:
        yield
    except NetConfigError as err:
        fail(str(err), EXIT_USAGE)
    except (CheckpointError, PairSetError, LockedError, TeacherLoadError, UnsafePickleError) as err:
        fail(str(err), EXIT_FAILURE)


@import_app.command("model")
def import_model_cmd(
        source: str = typer.Argument(..., help="A released 2-RF++ checkpoint or flow_model_*.pth, a teacher .pth "
                                               "(edm_cifar_ve_uncond.pth), a training_state_*.pth, an rfpp "
                                               ".safetensors export or an EDM .pkl."),
        config: str = typer.Option(None, "--config", help="The paper's network JSON (configs_unet/*.json); needed "
                                                          "for .pth files, which carry none."),
        out: str = typer.Option(..., "--out", "-o", help="The rfpp model file to write.")) -> None:
    """An rfpp model file (what `rfpp sample --checkpoint` and rfpp.checkpoints.load_model read) from the paper's
    files; the configuration comes from --config or, for EDM pickles and safetensors exports, from the file."""
    from rfpp.interop import import_model

    with _reported():
        path = import_model(source, out, config)
    typer.echo(f"imported {source} -> {path}")


@import_app.command("pairs")
def import_pairs_cmd(
        images: str = typer.Option(..., "--images", help="The set's samples.zip (one PNG per pair)."),
        noise: str = typer.Option(..., "--noise", help="The set's z.zip (one 32-byte PCG64 state per pair)."),
        labels: str = typer.Option(None, "--labels", help="images_labels.csv of a class-conditional set."),
        label_dim: int = typer.Option(None, "--label-dim", min=1, help="Number of classes (default: the largest "
                                                                       "label + 1)."),
        num_shards: int = typer.Option(1, "--num-shards", min=1, help="Shards of the rfpp pair set."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the pair set already in --out."),
        out: str = typer.Option(..., "--out", "-o", help="The pair set folder to write (e.g. "
                                                         "results/<profile>/pairs).")) -> None:
    """An rfpp pair set from the paper's generate_edm.py output; item i is the i-th name of z.zip in sorted order,
    its noise regenerated from the recorded PCG64 state (never stored)."""
    from rfpp.interop import import_pairs

    with _reported():
        import_pairs(images, noise, out, labels=labels, label_dim=label_dim, num_shards=num_shards,
                     overwrite=overwrite, log=typer.echo)


@export_app.command("model")
def export_model_cmd(
        model: str = typer.Argument(..., help="An rfpp model file (e.g. results/<profile>/train/<arm>/seed0/"
                                              "final.pt)."),
        fmt: str = typer.Option("reference", "--format", help="reference (the paper's state dict + JSON) or "
                                                              "safetensors (configuration in the metadata)."),
        out: str = typer.Option(..., "--out", "-o", help="The weights file to write (.pth or .safetensors)."),
        config_out: str = typer.Option(None, "--config-out", help="The configuration JSON (reference format; "
                                                                  "default: --out with .json).")) -> None:
    """A student trained here as the paper's generate.py loads it (`--ckpt FILE --config JSON`), or safetensors."""
    from rfpp.interop import export_model
    from rfpp.interop.export import FORMATS

    if fmt not in FORMATS:
        fail(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}", EXIT_USAGE)
    if config_out is not None and fmt != "reference":
        fail("--config-out is for --format reference (safetensors keeps the configuration in its metadata)",
             EXIT_USAGE)
    with _reported():
        written = export_model(model, out, fmt, config_out)
    typer.echo(" and ".join(str(p) for p in written.values()))


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")
    app.add_typer(export_app, name="export")
