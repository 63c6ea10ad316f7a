"""The Docker path: make sure the Flatcar SDK container image is there before the build starts.

``run_sdk_container`` pulls the image itself, half-way into a build and with little to say when it
cannot; checking first, through the Docker SDK (``DOCKER_HOST`` honoured), turns "no daemon", "no
image" and "pull refused" into one clear line before any long step. Named in :mod:`piccolo_build.run`'s
docstring as the one sibling of the process choke point that talks to a daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from piccolo_build.errors import PiccoloError


@dataclass(frozen=True)
class ImageInfo:
    name: str
    id: str
    pulled: bool


def _client(base_url: str | None) -> Any:
    import docker

    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
        client.ping()
    except Exception as exc:  # docker raises several unrelated types for "no daemon"
        raise PiccoloError(
            f"cannot reach the Docker daemon: {exc}",
            hint="start dockerd or set DOCKER_HOST; the Flatcar SDK runs in a privileged container",
        ) from None
    return client


def ensure_image(name: str, *, pull: bool = False, base_url: str | None = None) -> ImageInfo:
    """Return the local image ``name``; pull it first when absent and ``pull`` is allowed."""
    import docker.errors

    client = _client(base_url)
    try:
        try:
            image = client.images.get(name)
            return ImageInfo(name, str(image.id), pulled=False)
        except docker.errors.ImageNotFound:
            if not pull:
                raise PiccoloError(
                    f"the SDK image {name} is not present locally",
                    hint=f"docker pull {name}, or run with --pull",
                ) from None
        repo, _, tag = name.rpartition(":")
        try:
            image = client.images.pull(repo, tag=tag)
        except docker.errors.APIError as exc:
            raise PiccoloError(
                f"cannot pull the SDK image {name}: {exc.explanation or exc}",
                hint="check the SDK version (flatcar.sdk_version) and the registry access of this host",
            ) from None
        return ImageInfo(name, str(image.id), pulled=True)
    finally:
        client.close()
