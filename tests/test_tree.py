"""What the build reads from the real flatcar/scripts trees, how the plan adapts, the in-tree check,
the supported-releases table, and collect on what the tree's own compress_disk_images leaves behind."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from piccolo_build import releases
from piccolo_build.commands.build_cmd import facts as plan_facts
from piccolo_build.config import load_config
from piccolo_build.errors import PiccoloError
from piccolo_build.lock import lock_path
from piccolo_build.overlay import overlay_files
from piccolo_build.release import ReleaseInfo, collect
from piccolo_build.tree import TreeFacts, read_tree_facts
from piccolo_build.treecheck import check_tree
from tests.builder_helpers import DEFAULT_CONFIG, ROOT, cli
from tests.fixtures.flatcar import TAGS, FlatcarTrees

PIPE = (
    "containerd-flatcar|app-containers/containerd,"
    "docker-flatcar|app-containers/docker&app-containers/docker-cli&app-containers/docker-buildx"
)
COLON = PIPE.replace("|", ":")
# tag -> (separator, default list, default image types, update payload by default, OEM sysext, prebuilt,
# the Python the board profiles build)
EXPECTED = {
    "lts-4081.3.10": (":", COLON, ["prod"], False, "oem-qemu", False, "python3_11"),
    "stable-4230.2.3": (":", COLON, ["prod"], True, "oem-qemu", False, "python3_11"),
    "stable-4593.2.5": ("|", PIPE, ["prod"], True, "oem-qemu", False, "python3_12"),
    "beta-4757.1.0": ("|", PIPE, ["prod", "oem_sysext"], True, "qemu", True, "python3_12"),
    "alpha-4790.0.0": ("|", PIPE, ["prod", "oem_sysext"], True, "qemu", True, "python3_12"),
}
# What the facts of each tag say (the supported-releases table is made from them, not from this).
BUILDS = {tag: tag != "lts-4081.3.10" for tag in TAGS}
# What sysext-packages compiles besides our own packages: no Flatcar package needs them.
COMPILED = {"dev-python/cffi", "dev-python/cryptography", "dev-python/pycparser"}


def judge(tree: Path, facts: TreeFacts | None = None) -> releases.Verdict:
    """The verdict on the checkout ``tree`` for the default configuration, as the build asks for it."""
    return releases.judge_checkout(tree, plan_facts(load_config(DEFAULT_CONFIG)), facts)


def _plan(tree: Path, *extra: str) -> dict[str, Any]:
    r = cli("plan", "--config", DEFAULT_CONFIG, "--json", "--scripts-dir", tree, *extra)
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


@pytest.mark.parametrize("tag", TAGS)
def test_plan_json_shows_the_facts_of_each_tree_and_follows_them(flatcar: FlatcarTrees, tag: str) -> None:
    sep, default, types, update, oem, prebuilt, python = EXPECTED[tag]
    doc = _plan(flatcar.tree(tag))
    facts = doc["tree"]["facts"]
    number = tag.split("-", 1)[1]
    assert facts["flatcar_version"] == number
    assert facts["sdk_version"].split(".")[0] == number.split(".")[0]
    assert (facts["sysext_separator"], ",".join(facts["default_base_sysexts"])) == (sep, default)
    assert (facts["default_image_types"], facts["generate_update_default"]) == (types, update)
    assert (facts["qemu_uefi_oem_sysext"], facts["prebuilt_oem_sysext"]) == (oem, prebuilt)
    assert facts["board_profiles"] == ["coreos/amd64/generic", "coreos/arm64/generic"]
    assert facts["python_targets"] == [python]
    assert any(e.startswith(f"python{sep}dev-lang/python") for e in facts["extra_sysexts"])
    verdict = doc["tree"]["verdict"]
    assert (verdict["builds"], verdict["python"]) == (BUILDS[tag], python)
    steps = {s["name"]: s for s in doc["steps"]}
    names = [s["name"] for s in doc["steps"]]
    image = steps["build-image-amd64-usr"]["argv"]
    base = next(a for a in image if a.startswith("--base_sysexts="))
    ours = "dev-lang/python&dev-python/asn1crypto&dev-python/pyyaml&dev-python/tpm2-pytss&app-admin/piccolod"
    assert base == f"--base_sysexts=piccolod{sep}{ours},{default}"
    assert ("oem_sysext" in image, "--oem_sysexts=qemu" in image) == (prebuilt, prebuilt)
    assert image[-2:] == (["prod", "oem_sysext"] if prebuilt else [image[-2], "prod"])
    assert ("--generate_update" in image) == (not update)
    # The OEM sysext is built (by build_image) before image_to_vm.sh needs it.
    assert names.index("build-image-amd64-usr") < names.index("image-to-vm-amd64-usr")
    vm = steps["image-to-vm-amd64-usr"]["argv"]
    assert vm[-2:] == ["--format=qemu_uefi", "--image_compression_formats=none"]
    # Binary packages first (build_packages fetches Flatcar's), then the sysext's packages.
    assert names.index("build-packages-amd64-usr") < names.index("sysext-packages-amd64-usr")
    assert names.index("sysext-packages-amd64-usr") < names.index("build-image-amd64-usr")
    assert names.index("tree-check") == names.index("overlay") + 1
    assert "./build_packages" in steps["build-packages-amd64-usr"]["argv"]


def test_without_a_checkout_the_plan_says_what_it_will_read(tmp_path: Path) -> None:
    doc = _plan(tmp_path / "none")
    reads = doc["tree"]["read_after_checkout"]
    assert any(r.startswith("build_image:") for r in reads)
    assert any("vm_image_util.sh" in r for r in reads)
    image = next(s for s in doc["steps"] if s["name"] == "build-image-amd64-usr")["argv"]
    assert "<oem_sysext flags and image types read from the checkout>" in image


@pytest.mark.slow
def test_a_tree_whose_files_disagree_is_one_line_naming_the_file(
    flatcar: FlatcarTrees, tmp_path: Path
) -> None:
    tree = flatcar.copy("stable-4593.2.5", tmp_path / "t")
    builder = tree / "build_library" / "sysext_prod_builder"
    builder.write_text(builder.read_text().replace('name="${sysext%|*}"', 'name="${sysext%:*}"'))
    with pytest.raises(
        PiccoloError, match=r"sysext_prod_builder: splits entries at ':' but build_image"
    ) as e:
        read_tree_facts(tree)
    assert "\n" not in e.value.message
    r = cli("plan", "--config", DEFAULT_CONFIG, "--scripts-dir", tree)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {builder}: splits entries")


# --- the in-tree check ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("tag", TAGS)
def test_the_in_tree_check_agrees_with_the_verdict_read_from_the_tree(
    flatcar: FlatcarTrees, tag: str
) -> None:
    tree = flatcar.tree(tag)
    facts = read_tree_facts(tree)
    verdict = judge(tree, facts)
    assert verdict.builds == BUILDS[tag], verdict.reason
    cfg = load_config(DEFAULT_CONFIG)
    result = check_tree(
        tree, overlay_files(cfg, facts.python_compat), ["amd64", "arm64"], flatcar.pkgcheck_cache
    )
    assert "app-admin/piccolod" in result.packages and "dev-python/tpm2-pytss" in result.packages
    assert result.ok == verdict.builds, "\n".join(result.findings)
    if not verdict.builds:
        # The verdict names what pkgcheck finds missing: cffi, cryptography and pycparser at lts-4081.
        assert "dev-python/cffi" in verdict.reason
        assert any("dev-python/cffi" in f for f in result.findings), result.findings
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True, check=True
    )
    assert status.stdout == ""


@pytest.mark.slow
def test_python_compat_is_rendered_for_the_tree_and_the_default_does_not_build_python_3_11(
    flatcar: FlatcarTrees,
) -> None:
    tree = flatcar.tree("stable-4230.2.3")
    facts = read_tree_facts(tree)
    assert facts.python_compat == "python3_11"
    cfg = load_config(DEFAULT_CONFIG)
    files = {str(f.path): f.content.decode() for f in overlay_files(cfg, facts.python_compat)}
    ebuilds = [text for path, text in files.items() if path.endswith(".ebuild") and "distutils-r1" in text]
    assert ebuilds and all("PYTHON_COMPAT=( python3_11 )" in text for text in ebuilds)
    # The overlay rendered without a tree (overlays/, python3_12) is what stable-4230 refused.
    result = check_tree(tree, overlay_files(cfg), ["amd64"], flatcar.pkgcheck_cache)
    assert not result.ok and any("python_targets_python3_12" in f for f in result.findings), result.findings
    # `check --tree` renders for the tree it checks.
    env = {"XDG_CACHE_HOME": str(flatcar.pkgcheck_cache.parent / "xdg")}
    r = cli("check", "--config", DEFAULT_CONFIG, "--tree", tree, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_sysext_packages_compiles_what_no_flatcar_package_needs_and_the_sdk_has_what_they_need(
    flatcar: FlatcarTrees,
) -> None:
    for tag in (t for t in TAGS if BUILDS[t]):
        compiles = {c.package: c for c in judge(flatcar.tree(tag)).compiles}
        theirs = {k for k, c in compiles.items() if c.origin == "portage-stable"}
        assert theirs >= COMPILED, (tag, sorted(compiles))
        # What Flatcar publishes is fetched: the interpreter (the python extra sysext), packaging (pip's),
        # and the TSS (systemd's tpm USE flag in the coreos profile).
        assert not {"dev-lang/python", "dev-python/packaging", "app-crypt/tpm2-tss"} & set(compiles), tag
        crypto = compiles["dev-python/cryptography"]
        assert crypto.problems == ()
        assert any(n.startswith("Rust") and "dev-lang/rust" in n for n in crypto.needs), crypto.needs
        assert any(n.endswith("crates (all in its Manifest; fetched as distfiles)") for n in crypto.needs)
        assert {k for k, c in compiles.items() if c.origin.startswith("ours")} >= {
            "dev-python/asn1crypto",
            "dev-python/pyyaml",
            "dev-python/tpm2-pytss",
            "app-admin/piccolod",
            "dev-python/pkgconfig",
        }


def test_plan_lists_what_compiles_in_text_and_json(flatcar: FlatcarTrees) -> None:
    tree = flatcar.tree("alpha-4790.0.0")
    compiles = {c["package"]: c for c in _plan(tree)["tree"]["verdict"]["compiles"]}
    crypto = compiles["dev-python/cryptography"]
    assert (crypto["origin"], crypto["rust"], crypto["problems"]) == ("portage-stable", "1.95.0", [])
    assert crypto["crates"] == 32 and "Rust >= 1.83.0 (dev-lang/rust-1.95.0)" in crypto["needs"]
    assert compiles["app-admin/piccolod"]["version"] == "0.1.0"
    text = cli("plan", "--config", DEFAULT_CONFIG, "--scripts-dir", tree).stdout
    assert "this release builds: --base_sysexts entries name|packages; qemu_uefi needs" in text
    assert "sysext-packages compiles from source (Flatcar publishes no binary package of them):\n" in text
    assert (
        "  dev-python/cryptography-48.0.0 (portage-stable): needs Rust >= 1.83.0 (dev-lang/rust-1.95.0); "
        "32 crates (all in its Manifest; fetched as distfiles); the maturin build backend "
        "(dev-util/maturin-1.13.3); the board's C compiler\n"
    ) in text


@pytest.mark.slow
def test_a_tag_nobody_listed_is_judged_by_the_same_facts(flatcar: FlatcarTrees, tmp_path: Path) -> None:
    tree = flatcar.copy("stable-4593.2.5", tmp_path / "t")
    assert judge(tree).builds
    third_party = tree / "sdk_container" / "src" / "third_party"
    # A release whose cryptography ebuilds lost their stable keywords does not build, and says why.
    for ebuild in (third_party / "portage-stable" / "dev-python" / "cryptography").glob("*.ebuild"):
        text = ebuild.read_text()
        ebuild.write_text(text.replace('KEYWORDS="amd64 ', 'KEYWORDS="~amd64 '))
    verdict = judge(tree)
    assert not verdict.builds
    assert verdict.reason == (
        "no stable-keyworded dev-python/cryptography (needed by dev-python/tpm2-pytss) at this tag"
    )
    r = cli("plan", "--config", DEFAULT_CONFIG, "--scripts-dir", tree)
    assert r.returncode == 0, r.stderr
    assert f"this release does NOT build: {verdict.reason}\n" in r.stdout
    subprocess.run(["git", "checkout", "--quiet", "--", "."], cwd=tree, check=True)
    # One whose cryptography needs a newer Rust than the tree has is refused for that.
    crypto = third_party / "portage-stable" / "dev-python" / "cryptography" / "cryptography-46.0.2.ebuild"
    crypto.write_text(crypto.read_text().replace("\nCRATES=", '\nRUST_MIN_VER="9.0.0"\nCRATES=', 1))
    verdict = judge(tree)
    assert (
        not verdict.builds and "dev-python/cryptography: Rust >= 9.0.0: newest visible is" in verdict.reason
    )
    subprocess.run(["git", "checkout", "--quiet", "--", "."], cwd=tree, check=True)
    # One whose profile builds Python 3.11 renders PYTHON_COMPAT for it.
    defaults = third_party / "coreos-overlay" / "profiles" / "coreos" / "base" / "make.defaults"
    defaults.write_text(defaults.read_text().replace("-python3_11 python3_12", "python3_11 -python3_12"))
    assert read_tree_facts(tree).python_targets == ("python3_11",)
    # One whose build_image takes no --base_sysexts cannot carry the piccolod sysext.
    build_image = tree / "build_image"
    build_image.write_text(
        build_image.read_text().replace("DEFINE_string base_sysexts", "DEFINE_string gone")
    )
    verdict = judge(tree)
    assert (verdict.builds, verdict.reason) == (
        False,
        "build_image has no --base_sysexts, which the piccolod sysext needs",
    )


@pytest.mark.slow
def test_check_tree_exits_0_on_the_newest_stable_and_names_the_atom_that_does_not_resolve(
    flatcar: FlatcarTrees, tmp_path: Path
) -> None:
    tree = flatcar.tree("stable-4593.2.5")
    env = {"XDG_CACHE_HOME": str(flatcar.pkgcheck_cache.parent / "xdg")}
    r = cli("check", "--config", DEFAULT_CONFIG, "--tree", tree, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok: 6 packages in")
    # A lock pinned to what the tree lacks: tpm2-pytss 3.0 needs cryptography>=47 (46.0.3 here).
    lock = json.loads(lock_path().read_text())
    pkg = next(p for p in lock["packages"] if p["name"] == "tpm2-pytss")
    pkg["rdepend"] = [a.replace("cryptography-3.0", "cryptography-47.0.0") for a in pkg["rdepend"]]
    bad = tmp_path / "lock.json"
    bad.write_text(json.dumps(lock))
    r = cli("lock", "--lock-file", bad, "--tree", tree, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    finding = "NonexistentDeps: RDEPEND: nonexistent package: >=dev-python/cryptography-47.0.0"
    assert f"dev-python/tpm2-pytss-2.3.0: {finding}\n" in r.stdout
    r = cli("lock", "--tree", tree, env=env)
    assert r.returncode == 0, r.stdout


# --- the supported-releases table -------------------------------------------------------------


def test_the_supported_releases_table_is_the_verdict_on_every_tag_of_the_bundle(
    flatcar: FlatcarTrees,
) -> None:
    tags = subprocess.run(
        ["git", "tag"], cwd=flatcar.repo, capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(tags) == sorted(TAGS)
    ordered = sorted(tags, key=lambda t: releases.version(t) or (0, 0, 0))
    table = releases.table((t, judge(flatcar.tree(t))) for t in ordered)
    assert table in (ROOT / "docs" / "flatcar.md").read_text()
    assert table in (ROOT / "README.md").read_text()
    assert releases.newest("stable", tags) == "stable-4593.2.5"
    assert releases.newest("beta", tags) == "beta-4757.1.0"


# --- collect on what compress_disk_images leaves --------------------------------------------

SHFLAGS = r"""
FLAGS_TRUE=0
FLAGS_FALSE=1
DEFINE_string() { eval "FLAGS_$1=\"\$2\""; }
DEFINE_boolean() { eval "FLAGS_$1=\"\$2\""; }
DEFINE_integer() { eval "FLAGS_$1=\"\$2\""; }
info() { echo "INFO: $*"; }
die() { echo "DIE: $*" >&2; exit 1; }
"""
QEMU_FILES = (
    "flatcar_production_qemu_uefi_image.img",
    "flatcar_production_qemu_uefi_efi_code.qcow2",
    "flatcar_production_qemu_uefi_efi_vars.qcow2",
    "flatcar_production_qemu_uefi.sh",
)


def _image_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    payloads = ("flatcar_test_update.gz", "flatcar_test_update-oem-qemu.gz")
    for name in ("flatcar_production_image.bin", "flatcar_production_update.bin", *payloads):
        (root / name).write_bytes(b"image " + name.encode())
    for name in QEMU_FILES:
        (root / name).write_bytes(b"qemu " + name.encode())
    return root


def _compress(tree: Path, images: Path, flags: list[str], bin_dir: Path) -> None:
    """Source the tree's own release_util.sh and run its compress_disk_images over image_to_vm.sh's files,
    with the flags given as image_to_vm.sh would get them (lbzip2 is a stand-in on PATH)."""
    settings = "".join(f"FLAGS_{k.removeprefix('--')}={v}\n" for k, v in (f.split("=", 1) for f in flags))
    files = " ".join(f'"{images / n}"' for n in QEMU_FILES)
    script = f"""set -e
{SHFLAGS}
. "{tree / "build_library" / "release_util.sh"}"
{settings}
VM_GENERATED_FILES=({files})
declare -a compressed_images uploadable_files
compress_disk_images VM_GENERATED_FILES compressed_images uploadable_files
"""
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("tag", TAGS)
def test_collect_finds_the_qemu_uefi_files_compress_disk_images_leaves_with_the_plans_flags(
    flatcar: FlatcarTrees, tmp_path: Path, tag: str
) -> None:
    tree = flatcar.tree(tag)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lbzip2 = bin_dir / "lbzip2"  # the SDK's compressor; bzip2 makes the same file here
    lbzip2.write_text('#!/bin/sh\nfor a; do f=$a; done\nexec bzip2 -k -f "$f"\n')
    lbzip2.chmod(0o755)
    vm = next(s for s in _plan(tree)["steps"] if s["name"] == "image-to-vm-amd64-usr")["argv"]
    flags = [a for a in vm if a.startswith("--image_compression_formats=")]
    sdist = tmp_path / "piccolod-0.1.0.tar.gz"
    sdist.write_bytes(b"sdist")
    info = ReleaseInfo("0.1.0", tag, "0" * 40, None, "stable", ("amd64-usr",), "0" * 64)

    images = _image_dir(tmp_path / "plan")
    _compress(tree, images, flags, bin_dir)
    collect({"amd64-usr": images}, sdist, info, tmp_path / "staging", lambda _: None)
    staged = sorted(p.name for p in (tmp_path / "staging" / "amd64-usr").iterdir())
    assert {"flatcar_production_qemu_uefi_image.img", "flatcar_production_qemu_uefi_efi_code.qcow2"} <= set(
        staged
    )

    # The tree's defaults (bz2, only_store_compressed) delete the firmware files collect needs.
    defaults = _image_dir(tmp_path / "defaults")
    _compress(tree, defaults, [], bin_dir)
    assert (defaults / "flatcar_production_qemu_uefi_image.img.bz2").is_file()
    with pytest.raises(
        PiccoloError, match=r"efi_code\.fd or flatcar_production_qemu_uefi_efi_code\.qcow2 is missing"
    ):
        collect({"amd64-usr": defaults}, sdist, info, tmp_path / "staging2", lambda _: None)
    shutil.rmtree(tmp_path / "staging", ignore_errors=True)
