"""The kvm_host Ansible role against this very host: converges, then changes nothing.

Runs ansible-playbook from the test's own venv against localhost (connection=local),
exactly as `make setup` does. A second test repeats the run inside private mount
and PID namespaces, where libvirtd is already running and hugetlbfs is not mounted,
to check the role mounts it and restarts that libvirtd (so hugepage guests start).
Neither test stops the host's own libvirtd.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.ansible_helpers import ANSIBLE_DIR, BIN, ansible_env, playbook, recaps

pytestmark = [pytest.mark.integration, pytest.mark.exclusive]


LOCALHOST = ANSIBLE_DIR / "inventory" / "localhost.ini"


def _playbook_argv() -> list[str]:
    return [str(BIN / "ansible-playbook"), "-i", str(LOCALHOST), str(ANSIBLE_DIR / "site.yml")]


@pytest.fixture(scope="module", autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the kvm_host role prepares the host: run as root")
    if not (BIN / "ansible-playbook").exists():
        pytest.skip(f"ansible-playbook not found next to {sys.executable}")


def test_second_run_changes_nothing() -> None:
    first = playbook(LOCALHOST, "site.yml")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]

    second = playbook(LOCALHOST, "site.yml", timeout=120)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    recap = recaps(second.stdout)
    assert len(recap) == 1, second.stdout[-4000:]
    assert recap[0]["failed"] == 0
    assert recap[0]["changed"] == 0, "second run changed something:\n" + "\n".join(
        line
        for line in second.stdout.splitlines()
        if line.startswith("changed:") or line.startswith("TASK")
    )


# Runs inside `unshare --mount --pid --fork --mount-proc`: the libvirt directories and
# /run are private, hugetlbfs is unmounted privately, and a private virtlogd+libvirtd
# are started before the playbook runs. The host's own mounts and daemons are untouched.
NAMESPACE_SCRIPT = r"""
set -euo pipefail
root=$1; playbook_out=$2; shift 2
for d in run varlib log cache etc; do mkdir -p "$root/$d"; done
cp -a /etc/libvirt/. "$root/etc/"
rm -rf "$root/etc/qemu/autostart" "$root/etc/qemu/networks/autostart" "$root/etc/storage/autostart"
mount --bind "$root/run" /run
mount --bind "$root/varlib" /var/lib/libvirt
mount --bind "$root/log" /var/log/libvirt
mount --bind "$root/cache" /var/cache/libvirt
mount --bind "$root/etc" /etc/libvirt
if findmnt --mountpoint /dev/hugepages >/dev/null; then umount /dev/hugepages; fi
virtlogd -d
libvirtd -d
echo "pid-before $(cat /run/libvirtd.pid)"
trap 'kill $(cat /run/libvirtd.pid) $(cat /run/virtlogd.pid) 2>/dev/null || true' EXIT
"$@" > "$playbook_out" 2>&1 || { echo "playbook failed"; exit 1; }
echo "pid-after $(cat /run/libvirtd.pid)"
echo "hugetlbfs $(findmnt --noheadings --output FSTYPE --mountpoint /dev/hugepages)"
cat > "$root/hp.xml" <<'XML'
<domain type='qemu'>
  <name>kvmctl-role-hugetlbfs-probe</name>
  <memory unit='MiB'>16</memory>
  <memoryBacking><hugepages/></memoryBacking>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
</domain>
XML
virsh -q -c qemu:///system create "$root/hp.xml" >/dev/null
virsh -q -c qemu:///system destroy kvmctl-role-hugetlbfs-probe >/dev/null
echo "hugepage-guest started"
"""


def test_mounts_hugetlbfs_and_restarts_a_running_libvirtd(tmp_path: Path) -> None:
    for tool in ("unshare", "virtlogd", "libvirtd", "virsh", "findmnt"):
        if shutil.which(tool, path=ansible_env()["PATH"] + ":/usr/sbin:/sbin") is None:
            pytest.skip(f"{tool} not installed")
    script = tmp_path / "ns.sh"
    script.write_text(NAMESPACE_SCRIPT)
    root = tmp_path / "root"
    out = tmp_path / "playbook.out"
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--mount-proc",
        "bash",
        str(script),
        str(root),
        str(out),
        *_playbook_argv(),
    ]
    result = subprocess.run(
        argv, env=ansible_env(), capture_output=True, text=True, timeout=600, check=False
    )
    playbook_output = out.read_text() if out.exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + playbook_output[-4000:]
    facts = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert facts["hugetlbfs"] == "hugetlbfs"
    assert facts["pid-after"] != facts["pid-before"], "libvirtd was not restarted"
    assert "hugepage-guest started" in result.stdout
    assert re.search(
        r"RUNNING HANDLER \[kvm_host : Restart libvirtd \(plain daemon\)\]", playbook_output
    )
    recap = recaps(playbook_output)
    assert recap and recap[0]["failed"] == 0


def test_postcopy_opt_in_allows_userfaultfd_and_converges() -> None:
    """kvm_host_postcopy=true sets vm.unprivileged_userfaultfd to 1 (the knob
    post-copy destinations need), then changes nothing; the knob is put back."""
    knob = Path("/proc/sys/vm/unprivileged_userfaultfd")
    before = knob.read_text().strip()
    extra = ("-e", "kvm_host_postcopy=true", "-e", "kvm_host_persist=false")
    try:
        first = playbook(LOCALHOST, "site.yml", *extra)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
        assert knob.read_text().strip() == "1"
        second = playbook(LOCALHOST, "site.yml", *extra, timeout=120)
        assert second.returncode == 0, second.stdout[-4000:]
        assert [r["changed"] for r in recaps(second.stdout)] == [0]
    finally:
        knob.write_text(before + "\n")
