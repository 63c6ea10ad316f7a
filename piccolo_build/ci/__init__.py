"""CI for Piccolo OS builds: the workflow ``piccolo-build ci init`` writes and the cache key of a build.

- :mod:`piccolo_build.ci.workflow`: the GitHub Actions workflow rendered from ``piccolo.yaml``
  (a ``{release, board}`` matrix, vm-test, the signed release on tags), deterministic, with a drift
  check (``piccolo-build check``, ``piccolo-build ci init --check``);
- :mod:`piccolo_build.ci.key`: the cache key of one build, from its inputs.
"""

from __future__ import annotations

import enum


class Provider(enum.StrEnum):
    """The CI systems ``ci init`` writes for (the steps themselves are plain piccolo-build commands,
    docs/release.md shows them for any other CI)."""

    GITHUB = "github"
