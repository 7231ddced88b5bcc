"""`rfpp dvc`: write dvc.yaml for a profile, from the pipeline's one description (rfpp.dag)."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import EXIT_USAGE, fail, resolve

HEADER = """\
# Written by `{command}` from the pipeline's one description (rfpp/dag.py), the one Snakemake's rules
# use too: do not edit by hand. Run that command again to choose another profile, or after changing its arms,
# training seeds, NFEs, pair shards or feature network (`dvc exp run -S` on those keys needs it; others do not).
#
#   dvc repro                                            # the whole pipeline
#   dvc exp run -S '{params}:train.lr=0.0004'   # an experiment with one setting changed
#   dvc metrics show / dvc metrics diff                  # FID per arm, training seed and NFE
#   dvc plots show                                       # the report's figures
#   dvc remote add -d store /path/to/store && dvc push   # every output to a remote
"""


def register(app: typer.Typer) -> None:
    @app.command()
    def dvc(profile: str = typer.Option("digits", "--profile", "-p",
                                        help="A profile name (params/<name>.yaml of this folder) or a YAML path."),
            resume: bool = typer.Option(False, help="Training continues from each arm's checkpoints (--resume) "
                                                    "instead of starting over (--restart), like Snakemake's "
                                                    "`--config resume=true`."),
            out: str = typer.Option("dvc.yaml", "--out", "-o", help="The file to write.")) -> None:
        """Write dvc.yaml so that `dvc repro` runs this profile's pipeline: the same jobs, commands, inputs and
        outputs as `snakemake --config profile=<profile>` (run it in the project's root, beside params/)."""

        from rfpp.atomic import atomic_write
        from rfpp.dag import dvc_yaml

        params = Path(profile) if Path(profile).suffix in (".yaml", ".yml") else Path("params") / f"{profile}.yaml"
        if not params.is_file():
            fail(f"no profile file {params} here; run `rfpp dvc` in the project's root (beside params/), or pass "
                 f"--profile path/to/profile.yaml", EXIT_USAGE)
        config = resolve(str(params), [], dry_run=False, gpus=0)
        content = dvc_yaml(config, params, resume=resume)
        command = f"rfpp dvc --profile {profile}" + (" --resume" if resume else "")
        text = HEADER.format(command=command, params=params) + "\n" + _dump(content)
        atomic_write(Path(out), lambda handle: handle.write(text.encode()))
        typer.echo(f"{out}: the pipeline of {params}, {len(content['stages'])} stages; run `dvc repro`")


class _Inline(list):
    """A list written on one line: wildcard values and params sections (files stay one per line)."""


def _dump(content: dict) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(_Inline, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
    for stage in content["stages"].values():
        body = stage.get("do", stage)
        if "foreach" in stage:
            stage["foreach"] = _Inline(stage["foreach"])
        for key, values in stage.get("matrix", {}).items():
            stage["matrix"][key] = _Inline(values)
        body["params"] = [{f: _Inline(keys) for f, keys in entry.items()} for entry in body.get("params", [])]
        if not body["params"]:
            del body["params"]
    return yaml.dump(content, Dumper=Dumper, sort_keys=False, width=120)
