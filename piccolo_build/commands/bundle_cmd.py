"""``piccolo-build bundle`` (the agent's sdist and Manifest line) and ``lock`` (refresh the pins)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from piccolo_build.commands.config_cmd import ConfigOption, JsonOption, SetOption, load_for_cli

DEFAULT_OUTPUT = Path("dist")


def register(app: typer.Typer) -> None:
    @app.command("bundle")
    def bundle(
        config_file: ConfigOption = None,
        sets: SetOption = None,
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Directory for piccolod-<version>.tar.gz.")
        ] = DEFAULT_OUTPUT,
        deps: Annotated[
            bool,
            typer.Option(
                "--deps",
                help="Also put the locked dependency sdists into OUTPUT (download missing ones) and "
                "verify every one against piccolo.lock.json.",
            ),
        ] = False,
        as_json: JsonOption = False,
    ) -> None:
        """Write the agent's reproducible source distribution and print its Manifest DIST line."""
        from piccolo_build.bundle import build_sdist
        from piccolo_build.gentoo import manifest_line
        from piccolo_build.lock import fetch_distfiles, load_lock

        cfg = load_for_cli(config_file, sets)
        lock = load_lock()
        path = build_sdist(cfg, output, lock=lock)
        line = manifest_line(path.name, path.read_bytes())
        dep_files = [str(p) for p in fetch_distfiles(lock, output)] if deps else []
        if as_json:
            typer.echo(json.dumps({"sdist": str(path), "manifest": line, "dependencies": dep_files}))
        else:
            typer.echo("\n".join([str(path), line, *(f"{p}: verified" for p in dep_files)]))

    @app.command("lock")
    def lock(
        *,
        lock_file: Annotated[
            Path | None,
            typer.Option(
                "--lock-file",
                help="Lock to write (default: ./piccolo.lock.json if there is one, else the lock "
                "piccolo-build ships when run from its source checkout, else a new ./piccolo.lock.json).",
            ),
        ] = None,
        pyproject: Annotated[
            Path | None, typer.Option("--pyproject", help="pyproject.toml with the 'agent' extra.")
        ] = None,
        distdir: Annotated[
            Path | None, typer.Option("--distdir", help="Keep the downloaded sdists here.")
        ] = None,
        index: Annotated[
            str | None,
            typer.Option(
                "--index",
                help="Package index with PyPI's JSON API (default https://pypi.org/; https, or http "
                "only on 127.0.0.0/8 or [::1]).",
            ),
        ] = None,
        fetch_only: Annotated[
            Path | None,
            typer.Option(
                "--fetch-only",
                metavar="DIR",
                help="Change nothing: download what a refresh of the lock reads into DIR (the locked "
                "sdists into DIR/distfiles, the index's JSON documents into DIR/pypi), keeping files "
                "already there that match the lock. `build.py test` fills the tests' cache this way.",
            ),
        ] = None,
        tree: Annotated[
            Path | None,
            typer.Option(
                "--tree",
                metavar="DIR",
                file_okay=False,
                help="Change nothing: check that every atom of the lock's ebuilds resolves in the "
                "flatcar/scripts checkout DIR with stable keywords under the board profiles.",
            ),
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Resolve the agent's dependencies on PyPI, download their sdists and rewrite the lock."""
        from piccolo_build import lock as locking
        from piccolo_build import resolve

        index = index or resolve.PYPI_INDEX
        if tree is not None:
            from piccolo_build.commands.render_cmd import tree_check, tree_python_compat
            from piccolo_build.config import Board, load_config
            from piccolo_build.deps import dependency_files
            from piccolo_build.errors import PiccoloError

            compat = tree_python_compat(tree)
            try:
                rendered = dependency_files(load_config(), locking.load_lock(lock_file), compat)
            except ValueError as exc:
                raise PiccoloError(f"cannot render the lock's ebuilds: {exc}") from None
            tree_check(tree, rendered, [b.arch for b in Board], as_json=as_json)
            return
        if fetch_only is not None:
            current = locking.load_lock(lock_file)
            files = locking.fetch_distfiles(current, fetch_only / "distfiles", refetch_bad=True)
            docs = resolve.save_index_documents(current, fetch_only / "pypi", index)
            if as_json:
                typer.echo(
                    json.dumps({"distfiles": [str(f) for f in files], "documents": [str(d) for d in docs]})
                )
            else:
                typer.echo(
                    f"{fetch_only}: {len(files)} sdists and {len(docs)} index documents, all match the lock"
                )
            return
        target = lock_file or locking.write_path()
        new = resolve.refresh(pyproject or resolve.PYPROJECT, distdir, index)
        changed = locking.write_lock(new, target)
        pins = {p.name: p.version for p in new.packages}
        if as_json:
            typer.echo(json.dumps({"lock": str(target), "changed": changed, "packages": pins}))
        else:
            for name, version in pins.items():
                typer.echo(f"{name} {version}")
            typer.echo(f"{target}: {'updated' if changed else 'unchanged'}")
