"""Benchmark of ``build`` around the SDK: executor overhead, artefact digests, signing.

Run: ``.venv/bin/python bench/release.py [--size-mib 512] [--runs 3]``. Offline; uses the real
flatcar/scripts trees (``$PICCOLO_FLATCAR_SCRIPTS``, as the tests) with the tests' stand-ins for what
runs inside the SDK container (so the figures are piccolo-build's own cost, including the checkout of a
real tree and the in-tree pkgcheck, not Flatcar's), the locked dependency sdists from the tests'
download cache (``$PICCOLO_TEST_CACHE``, default ``.venv/test-cache``; verified, not downloaded), no
SDK image check (no Docker needed) and a throwaway gpg key. Prints:

1. wall time of a full build with the SDK stand-ins (clone to verified, signed release), median of runs;
2. wall time of a rebuild where every SDK step and the in-tree check are skipped (the cost of deciding
   what to skip, plus the always-run steps: overlay, sdist, distfile verification, RDEPEND, collect,
   sign, verify);
3. artefact digest throughput (SHA-256 and SHA-512 in one read, as ``collect`` does) on a SIZE MiB file;
4. the time to preflight the key (list + test signature) and to sign and verify one SHA256SUMS.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from piccolo_build import release  # noqa: E402
from piccolo_build.errors import PiccoloError  # noqa: E402
from piccolo_build.lock import load_lock, verify_distfiles  # noqa: E402
from tests.fixtures.fakesdk import (  # noqa: E402
    generate_key,
    kill_agent,
    make_fake_scripts,
    make_gnupghome,
    make_stand_in_repository,
    seed_distfiles,
)
from tests.fixtures.flatcar import scripts_url  # noqa: E402

CACHE = Path(os.environ.get("PICCOLO_TEST_CACHE") or ROOT / ".venv" / "test-cache") / "distfiles"


def build(project: Path, upstream: Path, email: str, home: Path) -> float:
    argv = [sys.executable, "-m", "piccolo_build", "build", "--config", str(ROOT / "piccolo.yaml")]
    argv += ["--scripts-url", str(upstream), "--set", f"release.signing_key={email}", "--no-sdk-image-check"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICCOLO_")}
    started = time.monotonic()
    r = subprocess.run(
        argv, cwd=project, env={**env, "GNUPGHOME": str(home)}, capture_output=True, check=False
    )
    took = time.monotonic() - started
    if r.returncode != 0:
        sys.exit(f"build failed:\n{r.stderr.decode()}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    try:
        verify_distfiles(load_lock(), CACHE)
    except PiccoloError as exc:
        sys.exit(f"{exc.message}; fill the cache with: python3 build.py test")
    home = make_gnupghome()
    try:
        email = "bench@piccolo.test"
        generate_key(home, email)
        os.environ["GNUPGHOME"] = str(home)
        with tempfile.TemporaryDirectory(prefix="bench-release-") as tmp:
            root = Path(tmp)
            full, noop = [], []
            source = make_stand_in_repository(scripts_url(), root / "source.git")
            for i in range(args.runs):
                fake = make_fake_scripts(root / f"fake{i}", source)
                project = root / f"project{i}"
                project.mkdir()
                seed_distfiles(CACHE, project / "build")
                full.append(build(project, fake.upstream, email, home))
                noop.append(build(project, fake.upstream, email, home))
            print(f"full build, SDK stand-ins: median {statistics.median(full):.2f} s ({args.runs} runs)")
            print(f"rebuild, all SDK steps skipped:  median {statistics.median(noop):.2f} s")

            big = root / "image.bin"
            with big.open("wb") as f:
                block = os.urandom(1 << 20)
                for _ in range(args.size_mib):
                    f.write(block)
            started = time.monotonic()
            release.digests(big)
            took = time.monotonic() - started
            print(
                f"artefact digests (sha256+sha512): {args.size_mib / took:.0f} MiB/s on {args.size_mib} MiB"
            )

            sums = root / "SHA256SUMS"
            sums.write_text(f"{'0' * 64}  image.bin\n")
            started = time.monotonic()
            fpr = release.preflight_key(email)
            pre = time.monotonic() - started
            started = time.monotonic()
            release.verify(release.sign(sums, fpr), sums, fpr)
            sign_ms = (time.monotonic() - started) * 1000
            print(f"key preflight: {pre * 1000:.0f} ms; sign + verify SHA256SUMS: {sign_ms:.0f} ms")
    finally:
        kill_agent(home)


if __name__ == "__main__":
    main()
