"""The install from zero, in a freshly built Debian 12 root: the project's own
bootstrap (Debian packages, the venv, kvmctl) and the kvm_host role's
install part (`--tags kvm_host_install`: packages, the kvm group, kvmctl's
directories) leave everything that `make setup` promises.

This host is never fresh (CI runs right after development on it), so only a
root built from Debian packages shows what a new user's machine lacks. What is
checked is a fixed list of promises (commands and directories), not the role's
own package list: a package dropped from the role fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import REPO
from tests.integration.fresh_root import FreshRoot, base_tarball

pytestmark = [pytest.mark.integration, pytest.mark.no_libvirt]

SRC = "/opt/kvmctl"
# What `make setup` promises a kvmctl host has: the command, and why.
COMMANDS = {
    "/usr/bin/qemu-system-x86_64": "the guests' emulator",
    "/usr/bin/qemu-img": "volumes and overlays",
    "/usr/sbin/libvirtd": "the libvirt daemon",
    "/usr/sbin/virtlogd": "console logs (libvirtd refuses to start domains without it)",
    "/usr/bin/virsh": "the libvirt client the role and users call",
    "/usr/bin/xmllint": "virt-xml-validate's checker",
    "/usr/sbin/mkfs.ext4": "the guests' /data file system",
    "/bin/busybox": "the test guests' user space",
    "/usr/bin/cpio": "the test guests' initramfs",
    "/usr/sbin/qemu-ga": "the guest agent copied into the test guests",
    "/usr/sbin/ip": "network namespaces for the lab",
    "/usr/bin/nsenter": "running commands on a lab host",
    "/usr/bin/mmdebstrap": "building Debian roots (this test's, the debian-12 guest image)",
}
DIRECTORIES = (
    "/run/kvmctl",
    "/var/lib/kvmctl/images",
    "/var/lib/kvmctl/volumes",
    "/var/lib/kvmctl/specs",
    "/var/lib/kvmctl/history",
    "/var/lib/kvmctl/snapshots",
    "/var/lib/kvmctl/warm",
    "/var/log/kvmctl",
)
PYTHON_IMPORTS = "import kvmctl.cli, libvirt, pyroute2, lxml, pydantic, pycdlib; print('ok')"

INSTALL = f"""
cd {SRC}
scripts/bootstrap.sh
.venv/bin/ansible-playbook -i ansible/inventory/localhost.ini ansible/site.yml \\
    --tags kvm_host_install
"""


def broken_promises(root: FreshRoot) -> list[str]:
    """Every promise the root does not keep, as one line each."""
    problems = [
        f"{path} missing ({why})"
        for path, why in COMMANDS.items()
        if not (root.path / path.lstrip("/")).exists()
    ]
    for d in DIRECTORIES:
        target = root.path / d.lstrip("/")
        if not target.is_dir():
            problems.append(f"directory {d} missing")
        elif target.stat().st_mode & 0o755 != 0o755:
            problems.append(f"directory {d} is mode {oct(target.stat().st_mode & 0o777)}")
    check = root.run(f"{SRC}/.venv/bin/python -c {PYTHON_IMPORTS!r}\n{SRC}/.venv/bin/kvmctl --help")
    if check.returncode != 0 or not check.stdout.startswith("ok"):
        problems.append(f"the venv cannot run kvmctl: {check.stderr.strip()[-500:]}")
    return problems


def _tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    return [f for f in out.split("\0") if f]


@pytest.fixture(scope="module")
def installed_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshRoot]:
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is missing: `make setup` (scripts/bootstrap.sh) installs it")
    tarball, built = base_tarball()
    started = time.monotonic()
    root = FreshRoot.unpack(tarball, tmp_path_factory.mktemp("fresh") / "root")
    try:
        root.copy_tree(_tracked_files(), REPO, SRC)
        result = root.run(INSTALL)
        seconds = time.monotonic() - started
        print(f"\nfresh root: base built in {built:.1f}s (0 = cached), install {seconds:.1f}s")
        assert result.returncode == 0, (
            f"install in a fresh Debian root failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        )
        yield root
    finally:
        root.remove()


def test_fresh_root_has_everything_setup_promises(installed_root: FreshRoot) -> None:
    assert broken_promises(installed_root) == []


def test_a_missing_package_is_caught(installed_root: FreshRoot) -> None:
    """The check is no formality: take one promised package away again."""
    gone = installed_root.run("dpkg --purge --force-depends qemu-utils >/dev/null")
    assert gone.returncode == 0, gone.stderr
    assert broken_promises(installed_root) == ["/usr/bin/qemu-img missing (volumes and overlays)"]
