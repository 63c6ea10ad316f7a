"""The second edit we make to Flatcar's checkout: our update server in ``build_library/set_lsb_release``.

``build_image`` runs flatcar/scripts' ``build_library/set_lsb_release`` in ``start_image``
(``build_library/build_image_util.sh``), right after ``sys-apps/baselayout`` is installed into the image
root and before the image's packages are. That script writes ``/usr/share/flatcar/update.conf`` from a
heredoc whose ``SERVER=`` line names Flatcar's public update server (``GROUP=`` comes from ``--group``,
and image_to_vm.sh reads the group back from that file). The file belongs to no package: it is the build
script's. Rather than ship a second copy from a package (which would also pin the group), we keep the
script's file and :func:`set_update_server` rewrites the heredoc's ``SERVER=`` line to our
``update.server``::

    ... "${ROOT_FS_DIR}/usr/share/flatcar/update.conf" <<EOF
    SERVER=https://updates.piccolo.space/v1/update/
    GROUP=$FLAGS_group
    EOF

It is idempotent (a line already carrying our value is left alone; any other value, Flatcar's or an
earlier build's, is replaced) and never silently skips: a script without that heredoc, or without a
``SERVER=`` line in it, is an error, because the image would otherwise ask Flatcar's server for updates.
"""

from __future__ import annotations

import re
from pathlib import Path

from piccolo_build.atomic import atomic_write
from piccolo_build.errors import PiccoloError, read_text

SCRIPT = Path("build_library") / "set_lsb_release"
# The heredoc that writes /usr/share/flatcar/update.conf: its opening line (delimiter unquoted or
# quoted), then the body up to the delimiter line.
_HEREDOC = re.compile(
    r"""^[^\n]*/usr/share/flatcar/update\.conf["']?[ \t]*<<-?[ \t]*(?P<q>["']?)(?P<delim>\w+)(?P=q)[ \t]*\n"""
    r"(?P<body>.*?)^(?P=delim)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_SERVER = re.compile(r"^SERVER=(?P<value>[^\n]*)$", re.MULTILINE)


def heredoc_value(value: str, *, quoted_delimiter: bool) -> str:
    """``value`` as literal heredoc text: in an unquoted heredoc bash expands ``$``, backticks and
    backslashes, so those are escaped (config validation already keeps them out of URLs)."""
    if "\n" in value:
        raise PiccoloError(f"update.server: {value!r} contains a newline")
    return value if quoted_delimiter else re.sub(r"([\\$`])", r"\\\1", value)


def set_update_server(scripts_dir: Path, server: str) -> bool:
    """Make ``set_lsb_release`` write ``SERVER=<server>`` into update.conf. Returns whether the file
    changed; raises :class:`PiccoloError` (one line) when the expected heredoc is not there."""
    script = scripts_dir / SCRIPT
    text = read_text(script)
    docs = list(_HEREDOC.finditer(text))
    if len(docs) != 1:
        what = "no heredoc writing" if not docs else "more than one heredoc writing"
        raise PiccoloError(
            f"{script}: {what} /usr/share/flatcar/update.conf, cannot set update.server",
            hint="has flatcar/scripts changed how build_image writes update.conf? (docs/release.md)",
        )
    doc = docs[0]
    servers = list(_SERVER.finditer(doc.group("body")))
    line = 1 + text[: doc.start("body")].count("\n")
    if len(servers) != 1:
        raise PiccoloError(
            f"{script}:{line}: expected one SERVER= line in the update.conf heredoc, found {len(servers)}",
            hint="has flatcar/scripts changed how build_image writes update.conf? (docs/release.md)",
        )
    wanted = heredoc_value(server, quoted_delimiter=bool(doc.group("q")))
    found = servers[0]
    if found.group("value") == wanted:
        return False
    start = doc.start("body") + found.start("value")
    end = doc.start("body") + found.end("value")
    atomic_write(script, (text[:start] + wanted + text[end:]).encode(), script.stat().st_mode & 0o777)
    return True
