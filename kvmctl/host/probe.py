"""Probe this host into HostFacts: /proc, sysfs and libvirt, read-only.

The readers of /proc and sysfs are pure functions (kvmctl.host.kernelinfo);
`probe_host` wires them to the real paths. The only side effect is the KVM
probe guest (see kvmprobe), booted at most once per host boot and removed
again.
"""

from __future__ import annotations

import platform
import socket
from dataclasses import dataclass
from pathlib import Path

from kvmctl.host.channels import parse_dac_owner
from kvmctl.host.facts import HostFacts, LibvirtInfo
from kvmctl.host.kernelinfo import (
    CAP_SYS_RESOURCE,
    _read,
    _under,
    cgroup_info,
    daemon_pid,
    daemons_running,
    has_capability,
    hugetlbfs_mounts,
    parse_cap_eff,
    parse_limits_memlock,
    parse_meminfo,
    parse_mounts,
    read_bridges,
    read_cpus,
    read_hugepages,
    read_isolated,
    read_rt_budget,
    read_shm,
    userfaultfd_unprivileged,
    vhost_vsock,
    vlan_supported,
)
from kvmctl.host.kvmdevice import guest_domain_types, qemu_access_problem
from kvmctl.host.kvmprobe import (
    CACHE_NAME,
    DEFAULT_TIMEOUT,
    KvmVerdict,
    cache_key,
    decide_kvm,
    kvm_device,
    libvirt_booter,
    load_cached,
    store_cached,
)
from kvmctl.host.probeguest import locate_image
from kvmctl.state.paths import run_dir

# --- libvirt and KVM -------------------------------------------------------------------


def _libvirt_facts(
    uri: str | None, timeout: float, reprobe: bool, root: Path
) -> tuple[LibvirtInfo, KvmVerdict, str, str]:
    """Versions, the KVM verdict and the capabilities XML through the libvirt
    adapter; unreachable is a fact here."""
    from kvmctl.adapters.libvirt import connect, library_version
    from kvmctl.errors import HostError

    device = kvm_device()
    shown = uri or "qemu:///system"
    try:
        lv = connect(uri)
    except HostError as err:
        info = LibvirtInfo(
            uri=shown,
            reachable=False,
            library_version=library_version(),
            error=str(err),
        )
        if not device.exists():
            verdict = KvmVerdict("absent", f"{device} does not exist", "qemu")
        else:
            verdict = KvmVerdict(
                "present-but-unusable",
                f"{device} exists, but libvirt is unreachable so no probe guest was booted",
                "qemu",
                blocking=True,
            )
        return info, verdict, "", ""
    with lv:
        versions = lv.versions()
        info = LibvirtInfo(
            uri=lv.uri,
            reachable=True,
            library_version=versions.library,
            daemon_version=versions.daemon,
            hypervisor_version=versions.hypervisor,
        )
        caps = lv.capabilities_xml()
        types = guest_domain_types(caps, platform.machine())
        image, image_problem = locate_image()
        boot_id = _read(_under(root, "/proc/sys/kernel/random/boot_id")).strip()
        cache = run_dir() / CACHE_NAME
        key = cache_key(boot_id, device, lv.uri, image.sha256 if image else "")
        if image is not None and device.exists() and not reprobe:
            cached = load_cached(cache, key)
            if cached is not None:
                return info, cached, boot_id, caps
        booter = libvirt_booter(lv.boot_until_marker, image, timeout) if image is not None else None
        verdict = decide_kvm(
            device,
            types,
            image,
            booter,
            timeout,
            # qemu:///session runs QEMU as the caller, not as qemu.conf's user
            access_problem=(
                qemu_access_problem(device)
                if device.exists() and "/session" not in lv.uri
                else None
            ),
            image_problem=image_problem,
        )
        if verdict.probed and not verdict.blocking:
            store_cached(cache, key, verdict)
        return info, verdict, boot_id, caps


@dataclass(frozen=True)
class Probe:
    """HostFacts plus what the probe learnt on the way (for doctor's report)."""

    facts: HostFacts
    kvm: KvmVerdict
    memlock_source: str  # which process's limits were read


def probe(
    uri: str | None,
    *,
    root: Path = Path("/"),
    reprobe: bool = False,
    kvm_timeout: float = DEFAULT_TIMEOUT,
) -> Probe:
    """Everything `probe_host` returns, plus the KVM verdict's details."""
    from kvmctl.adapters.libvirt import is_remote_uri
    from kvmctl.errors import UsageError

    if is_remote_uri(uri):
        raise UsageError(
            f"host facts come from the machine kvmctl runs on, and {uri} is another one: "
            "run `kvmctl doctor` or `kvmctl facts -o host.json` there"
        )
    info, verdict, boot_id, caps = _libvirt_facts(uri, kvm_timeout, reprobe, root)
    meminfo = parse_meminfo(_read(_under(root, "/proc/meminfo")))
    mounts = parse_mounts(_read(_under(root, "/proc/mounts")))
    cg = cgroup_info(mounts, root)
    rt, rt_budget = read_rt_budget(root, cg.cpu_mount)
    # libvirtd sets QEMU's locked-memory limit, so its own limit and capabilities are
    # what decide; kvmctl's process stands in when the daemon is not running here.
    libvirtd = daemon_pid("libvirtd", root)
    who = str(libvirtd) if libvirtd is not None else "self"
    memlock_source = f"libvirtd, pid {libvirtd}" if libvirtd is not None else "kvmctl itself"
    limits = _read(_under(root, f"/proc/{who}/limits"))
    status = _read(_under(root, f"/proc/{who}/status"))
    shm_free, shm_files = read_shm(root)
    facts = HostFacts(
        hostname=socket.gethostname() if root == Path("/") else "",
        boot_id=boot_id or _read(_under(root, "/proc/sys/kernel/random/boot_id")).strip(),
        libvirt=info,
        daemons=daemons_running(root),
        kvm=verdict.status,
        kvm_reason=verdict.reason,
        virt_type=verdict.virt_type,
        cpus=read_cpus(root),
        isolated_cpus=read_isolated(root),
        memory_total_kib=meminfo.get("MemTotal", 0),
        memory_available_kib=meminfo.get("MemAvailable", 0),
        hugepages=read_hugepages(root),
        hugetlbfs_mounts=hugetlbfs_mounts(mounts),
        memlock_limit_kib=parse_limits_memlock(limits) if limits else _own_memlock_kib(),
        cap_sys_resource=has_capability(parse_cap_eff(status), CAP_SYS_RESOURCE),
        cgroup_version=cg.version,
        cgroup_controllers=cg.controllers,
        rt_group_sched=rt,
        rt_runtime_us_root=rt_budget,
        bridges=read_bridges(root),
        vlan_supported=vlan_supported(root),
        userfaultfd_unprivileged=userfaultfd_unprivileged(root),
        shm_free_bytes=shm_free,
        shm_files=shm_files,
        vhost_vsock=vhost_vsock(root),
        qemu_owner=parse_dac_owner(caps, verdict.virt_type) if caps else None,
    )
    return Probe(facts=facts, kvm=verdict, memlock_source=memlock_source)


def _own_memlock_kib() -> int | None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if hard == resource.RLIM_INFINITY else hard // 1024


def probe_host(
    uri: str | None,
    *,
    root: Path = Path("/"),
    reprobe: bool = False,
    kvm_timeout: float = DEFAULT_TIMEOUT,
) -> HostFacts:
    """One read-only snapshot of this host (see HostFacts).

    `uri` is the local libvirt to ask (None: libvirt's default). An
    unreachable daemon is recorded in `facts.libvirt`, not raised. The KVM
    verdict comes from a booted probe guest, cached until reboot unless
    `reprobe`. `root` replaces "/" for /proc and /sys (tests).
    """
    return probe(uri, root=root, reprobe=reprobe, kvm_timeout=kvm_timeout).facts


__all__ = ["Probe", "probe", "probe_host"]
