"""Where one build lives on disk: the build context, kept apart from the configuration (docs/architecture.md).

``BuildConfig`` says *what* to build; :class:`BuildContext` says *where*: the work directory (``build/``
by default), the flatcar/scripts checkout inside it, the logs, the state file recording finished steps,
and the paths inside the checkout that the Flatcar SDK reads. Paths inside the checkout follow
flatcar/scripts (docs/flatcar.md):

- ``run_sdk_container`` mounts the checkout's ``sdk_container/`` at ``/mnt/host/source`` and
  ``__build__/images`` at ``/mnt/host/source/src/build`` inside the SDK container;
- the overlay is ``sdk_container/src/third_party/coreos-overlay``;
- portage's ``DISTDIR`` in the SDK is ``/mnt/host/source/.cache/distfiles``, which is the checkout's
  ``sdk_container/.cache/distfiles`` on the host: that is where the agent's sdist and the locked
  ``dev-python`` sdists (``piccolo.lock.json``) must be for ``emerge`` to find them without a download.
  The locked sdists are kept in ``build/distfiles`` (:attr:`BuildContext.distfile_cache`) between
  builds, so a fresh checkout needs no download, and verified against the lock on every build;
- ``sdk_container/.repo/manifests/version.txt`` pins the SDK version of the checked-out tag
  (:mod:`piccolo_build.versionfile`);
- ``build_image`` writes to ``<build root>/images/<board>/<group>-<version>-a<attempt>`` (older
  scripts: ``<version>-a<attempt>``) and points ``latest`` at it, i.e.
  ``__build__/images/images/<board>/latest`` on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_SCRIPTS_URL = "https://github.com/flatcar/scripts.git"
DEFAULT_SDK_IMAGE = "ghcr.io/flatcar/flatcar-sdk-all"

# Inside the SDK container (run_sdk_container's volume mounts).
CONTAINER_SOURCE = "/mnt/host/source"
CONTAINER_BUILD_ROOT = f"{CONTAINER_SOURCE}/src/build"


def docker_tag(sdk_version: str) -> str:
    """The image tag of an SDK version: Docker tags cannot hold '+', flatcar/scripts uses '-'."""
    return sdk_version.replace("+", "-")


@dataclass(frozen=True)
class BuildContext:
    """Paths and switches of one build; everything else is derived from these as properties."""

    work_dir: Path = Path("build")
    scripts_dir_override: Path | None = None
    scripts_url: str = DEFAULT_SCRIPTS_URL
    sdk_image_repo: str = DEFAULT_SDK_IMAGE
    allow_pull: bool = False
    config_file: Path | None = None
    check_sdk_image: bool = True  # check the SDK image through the Docker API before any SDK step
    distfiles_mirror: str | None = None  # replaces https://files.pythonhosted.org/packages/ in downloads
    require_signature: bool = False  # preflight fails when release.signing_key is null
    # The private key update payloads are signed with in the release step (a file outside the build
    # tree; --update-signing-key or $PICCOLO_UPDATE_SIGNING_KEY). Read, never copied or logged.
    update_signing_key: Path | None = None

    @property
    def scripts_dir(self) -> Path:
        """The flatcar/scripts checkout (cloned here when absent)."""
        return self.scripts_dir_override or self.work_dir / "scripts"

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    def log_file(self, step: str) -> Path:
        return self.logs_dir / f"{step}.log"

    @property
    def state_file(self) -> Path:
        """JSON record of finished steps: name -> input digest and result."""
        return self.work_dir / "state.json"

    @property
    def rendered_overlay(self) -> Path:
        """The overlay rendered from piccolo.yaml, before it is copied into the checkout."""
        return self.work_dir / "overlay"

    @property
    def dist_dir(self) -> Path:
        """Where the agent's source distribution is built."""
        return self.work_dir / "dist"

    @property
    def distfile_cache(self) -> Path:
        """The locked dependency sdists, downloaded once (only missing files) and kept between builds."""
        return self.work_dir / "distfiles"

    @property
    def pkgcheck_cache(self) -> Path:
        """pkgcheck's caches of the in-tree check, kept between builds."""
        return self.work_dir / "pkgcheck-cache"

    @property
    def staging_dir(self) -> Path:
        """Artefacts, checksums and signatures before they are verified and moved to the output dir."""
        return self.work_dir / "release-staging"

    @property
    def coreos_overlay(self) -> Path:
        return self.scripts_dir / "sdk_container" / "src" / "third_party" / "coreos-overlay"

    @property
    def coreos_ebuild_dir(self) -> Path:
        """``coreos-base/coreos``: its RDEPEND is the production image's package set."""
        return self.coreos_overlay / "coreos-base" / "coreos"

    @property
    def lsb_release_script(self) -> Path:
        """``build_library/set_lsb_release``: build_image runs it to write /usr/share/flatcar/update.conf."""
        return self.scripts_dir / "build_library" / "set_lsb_release"

    @property
    def distfiles_dir(self) -> Path:
        """The SDK's portage DISTDIR as seen from the host."""
        return self.scripts_dir / "sdk_container" / ".cache" / "distfiles"

    @property
    def version_file(self) -> Path:
        """flatcar/scripts' record of the OS and SDK versions of the checked-out tag."""
        return self.scripts_dir / "sdk_container" / ".repo" / "manifests" / "version.txt"

    def images_dir(self, board: str) -> Path:
        """``build_image``'s output for ``board``, on the host."""
        return self.scripts_dir / "__build__" / "images" / "images" / board / "latest"

    @staticmethod
    def container_images_dir(board: str) -> str:
        """The same directory as seen inside the SDK container (for ``image_to_vm.sh --from``)."""
        return f"{CONTAINER_BUILD_ROOT}/images/{board}/latest"

    def sdk_image(self, sdk_version: str) -> str:
        return f"{self.sdk_image_repo}:{docker_tag(sdk_version)}"
