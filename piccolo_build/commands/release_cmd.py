"""``piccolo-build release sign|verify``: sign a built release's update payloads (and its checksums) in
the release step, and check a release as a device and a user would (:mod:`piccolo_build.signing`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from piccolo_build.commands.build_cmd import (
    ProductionOption,
    UpdateSigningKeyOption,
    development_key_warning,
    refuse_development_key,
)
from piccolo_build.commands.config_cmd import ConfigOption, SetOption, load_for_cli

ReleaseDir = Annotated[
    Path,
    typer.Argument(help="The release directory (what build published in release.output_dir).", metavar="DIR"),
]


def register(app: typer.Typer) -> None:
    from piccolo_build.cli import command_group

    group = command_group(app, "release", "Sign and verify a built release.")

    @group.command("sign")
    def sign(  # noqa: PLR0917 - Typer passes every option by keyword
        directory: ReleaseDir,
        config: ConfigOption = None,
        sets: SetOption = None,
        update_signing_key: UpdateSigningKeyOption = None,
        production: ProductionOption = False,
        require_signature: Annotated[
            bool, typer.Option("--require-signature", help="Refuse unless release.signing_key is set.")
        ] = False,
    ) -> None:
        """Sign the update payloads for release.update_key (and SHA256SUMS and the payloads with gpg when
        release.signing_key is set), verify, and put the signed release in place of DIR."""
        from piccolo_build import signing
        from piccolo_build.config import update_key_pem
        from piccolo_build.errors import PiccoloError

        cfg = load_for_cli(config, sets)
        if production:
            refuse_development_key(cfg)
        if require_signature and cfg.release.signing_key is None:
            raise PiccoloError(
                "--require-signature: release.signing_key is not set, the release would not be gpg-signed",
                hint="set PICCOLO_RELEASE_SIGNING_KEY or --set release.signing_key=KEY",
            )
        root = directory
        key = cfg.release.update_key
        signing.sign_release(
            root,
            update_key_pem=None if key is None else update_key_pem(key),
            key_path=signing.signing_key_path(update_signing_key),
            gpg_key=cfg.release.signing_key,
            log=typer.echo,
        )
        typer.echo(f"{root}: signed and verified")
        development_key_warning(cfg)

    @group.command("verify")
    def verify(directory: ReleaseDir, config: ConfigOption = None, sets: SetOption = None) -> None:
        """Check every checksum, every gpg signature (release.signing_key) and every update payload's
        signature against release.update_key, as update_engine checks it. Exit 1 when one fails."""
        from piccolo_build import release, signing
        from piccolo_build.config import update_key_pem

        cfg = load_for_cli(config, sets)
        root = directory
        gpg = cfg.release.signing_key
        key = cfg.release.update_key
        signing.verify_release(
            root,
            update_key_pem=None if key is None else update_key_pem(key),
            gpg_fingerprint=release.key_fingerprint(gpg, secret=False) if gpg else None,
            log=typer.echo,
        )
        typer.echo(f"{root}: verified")
        development_key_warning(cfg)
