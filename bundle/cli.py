"""The `trm bundle` command: build the offline Kaggle bundle (wheels, slim checkpoint, manifest,
generated notebook, metadata) and optionally publish it. Defaults are BundleOptions'.

A plain click command; the `trm` console script (trm_cli) registers it on the core group.
"""

from __future__ import annotations

from pathlib import Path

import click

from bundle.build import BundleOptions


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
@click.option("--push", is_flag=True, help="Upload the dataset and push the notebook (prints the kaggle "
                                           "commands instead when no credentials are found).")
def bundle_cmd(checkpoint: str, out: str, target: str, config: str | None, wheels_dir: str | None,
               own_wheel: str | None, owner: str | None, slug: str, kernel_slug: str | None,
               competition: str, push: bool) -> None:
    """Build the offline Kaggle bundle: wheels, slim checkpoint, manifest, notebook, metadata."""
    from bundle import BundleError
    from bundle.build import build_bundle, default_owner
    from bundle.publish import publish

    options = BundleOptions(
        checkpoint=checkpoint, out=Path(out), target=target, config=config,
        wheels_dir=Path(wheels_dir) if wheels_dir else None, own_wheel=Path(own_wheel) if own_wheel else None,
        owner=owner or default_owner(), slug=slug, kernel_slug=kernel_slug, competition=competition)
    try:
        result = build_bundle(options, log=lambda s: click.echo(s, err=True))
        click.echo(f"bundle {result.manifest['bundle_id']} for {result.manifest['target_image']}:")
        click.echo(f"  dataset folder  {result.dataset_dir}")
        click.echo(f"  notebook folder {result.kernel_dir}")
        for line in result.size_report():
            click.echo("  " + line)
        if push:
            publish(Path(out), competition=competition,
                    version_notes=f"trm-kit bundle {result.manifest['bundle_id']}", echo=click.echo)
    except (BundleError, ValueError) as e:
        raise click.ClickException(str(e)) from None
