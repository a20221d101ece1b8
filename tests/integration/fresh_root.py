"""A freshly built Debian 12 root to install kvmctl into, as a new user's machine.

The base root (mmdebstrap, variant `apt`: essential packages, apt and Python)
is built once and cached as a tarball named after what went into it, so a
warm run only unpacks it. Each test gets its own copy, works in it through
`chroot` inside a private mount namespace (its /proc, /sys, /dev mounts vanish
with the namespace), and removes it afterwards. apt's downloaded packages and
pip's cache are kept between runs beside the tarball: they save downloads,
never an install step.

Nothing in the root starts a daemon: Debian's `policy-rc.d` convention for
chroots refuses every service start.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# What a fresh Debian 12 machine has (and `python3`, which a cloud image has
# and Ansible needs): nothing of kvmctl's.
INCLUDE = ("python3", "ca-certificates")
CACHE = Path(os.environ.get("KVMCTL_FRESH_ROOT_CACHE", "/var/cache/kvmctl/fresh-root"))
POLICY_RC_D = "#!/bin/sh\n# a chroot: no service may start here\nexit 101\n"


def base_key() -> str:
    version = subprocess.run(
        ["mmdebstrap", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    recipe = "\n".join([SUITE, *MIRRORS, *INCLUDE, version])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def base_tarball() -> tuple[Path, float]:
    """The cached base root, built when missing; (path, seconds spent building)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"bookworm-{base_key()}.tar"
    if tarball.exists():
        return tarball, 0.0
    for old in CACHE.glob("bookworm-*.tar"):
        old.unlink()
    started = time.monotonic()
    partial = tarball.with_suffix(".tar.part")
    subprocess.run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=apt",
            f"--include={','.join(INCLUDE)}",
            "--format=tar",
            SUITE,
            str(partial),
            *MIRRORS,
        ],
        check=True,
        capture_output=True,
    )
    partial.rename(tarball)
    return tarball, time.monotonic() - started


@dataclass
class FreshRoot:
    path: Path

    @classmethod
    def unpack(cls, tarball: Path, where: Path) -> FreshRoot:
        where.mkdir(parents=True)
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(where)], check=True)
        root = cls(where)
        root.write("/usr/sbin/policy-rc.d", POLICY_RC_D, mode=0o755)
        # dpkg's fsync per file costs minutes on a shared disk; a throwaway root
        # needs no crash safety.
        root.write("/etc/dpkg/dpkg.cfg.d/unsafe-io", "force-unsafe-io\n")
        root.take_network_setup()
        return root

    def take_network_setup(self) -> None:
        """What any machine here has for reaching the package registries (name
        service, the certificate authorities local to this network, pip's use
        of the system's trust store): the machine's, not the project's."""
        for absolute in ("/etc/resolv.conf", "/etc/pip.conf"):
            if Path(absolute).is_file():
                self.write(absolute, Path(absolute).read_text())
        local_cas = Path("/usr/local/share/ca-certificates")
        for ca in sorted(local_cas.glob("*.crt")):
            self.write(str(ca), ca.read_text())

    def write(self, absolute: str, text: str, mode: int = 0o644) -> None:
        target = self.path / absolute.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def copy_tree(self, files: list[str], source: Path, absolute: str) -> None:
        """Copy the named files (relative to `source`) to `absolute` in the root."""
        dest = self.path / absolute.lstrip("/")
        for name in files:
            src = source / name
            if not src.is_file():
                continue  # deleted in the work tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)

    def run(self, script: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run a bash script as root inside the root, with the caches mounted."""
        apt_cache = CACHE / "apt-archives"
        pip_cache = CACHE / "pip"
        for d in (apt_cache / "partial", pip_cache):
            d.mkdir(parents=True, exist_ok=True)
        r = shlex.quote(str(self.path))
        script = "update-ca-certificates >/dev/null\n" + script
        mounts = [
            f"mount -t proc proc {r}/proc",
            f"mount --rbind /sys {r}/sys",
            f"mount --rbind /dev {r}/dev",
            f"mkdir -p {r}/var/cache/apt/archives {r}/root/.cache/pip",
            f"mount --bind {shlex.quote(str(apt_cache))} {r}/var/cache/apt/archives",
            f"mount --bind {shlex.quote(str(pip_cache))} {r}/root/.cache/pip",
            f"exec chroot {r} /usr/bin/env -i HOME=/root TERM=dumb "
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
            "DEBIAN_FRONTEND=noninteractive /bin/bash -euo pipefail -c " + shlex.quote(script),
        ]
        return subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--fork",
                "--",
                "/bin/sh",
                "-ec",
                "\n".join(mounts),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def remove(self) -> None:
        # The mounts lived in the namespace that ended with `run`; nothing to unmount.
        shutil.rmtree(self.path, ignore_errors=True)
