"""The cockpit spec as frozen, typed models (field names are binding: see docs/design.md).

Structure and single-field rules live here; rules that relate fields to each
other (dependency graph, network references, CPU claims) live in
`kvmctl.spec.semantics`, so each error can name its own field path.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from kvmctl.spec.channels import Channel
from kvmctl.spec.networks import AttachmentIn, Network
from kvmctl.spec.safestate import Heartbeat, SafeState
from kvmctl.spec.types import (
    DEFAULT_IMAGE_DIRS,
    CpuId,
    Duration,
    Model,
    Name,
    Percent,
    Rate,
    Size,
    VcpuLimit,
)
from kvmctl.spec.units import parse_size

# --- host --------------------------------------------------------------------


class HostSection(Model):
    housekeeping_cpus: list[CpuId] = Field(default_factory=lambda: [0], min_length=1)
    # Housekeeping CPUs of the protected VMs' own (cpu.protect_emulator): their
    # emulator and I/O threads run there, away from the shared VMs' vCPUs.
    safety_housekeeping_cpus: list[CpuId] = Field(default_factory=list)
    added_later = ("safety_housekeeping_cpus",)
    # Where `image: {path: ...}` may point. A spec cannot reach outside these.
    image_dirs: list[str] = Field(default_factory=lambda: list(DEFAULT_IMAGE_DIRS))
    # Share of each period real-time vCPUs of the whole set may use (cgroup v1 RT
    # group scheduling); the rest stays for the host so a runaway FIFO vCPU cannot
    # lock it up.
    rt_budget: Percent = 90.0

    @field_validator("housekeeping_cpus", "safety_housekeeping_cpus")
    @classmethod
    def _unique(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("lists a CPU twice")
        return sorted(value)

    @field_validator("image_dirs")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        for d in value:
            if not d.startswith("/"):
                raise ValueError(f"'{d}' is not an absolute directory")
        return value

    @field_validator("rt_budget")
    @classmethod
    def _budget(cls, value: float) -> float:
        if not 0 < value <= 95:
            raise ValueError("must be between 0% and 95% (the host keeps at least 5%)")
        return value


class HostRef(Model):
    uri: str = Field(min_length=1)
    # How VMs run there. Unset: KVM when a probe guest booted under it there
    # reaches user space (kvmctl.host.remote), as `kvmctl doctor` judges this host.
    virt_type: Literal["kvm", "qemu"] | None = None


# --- one VM ------------------------------------------------------------------


class Realtime(Model):
    policy: Literal["fifo", "rr"] = "fifo"
    priority: Annotated[int, Field(ge=1, le=99)] = 10


class Cpu(Model):
    placement: Literal["dedicated", "shared"] = "shared"
    shares: Annotated[int, Field(ge=2, le=262144)] | None = None
    limit: VcpuLimit | None = None
    realtime: Realtime | None = None
    # Explicit pCPUs; otherwise the planner picks them.
    cpus: list[CpuId] | None = None
    # The emulator and I/O threads (timers, device emulation) get priority on
    # the housekeeping CPUs over the shared VMs there. Default: on for a
    # dedicated safety VM (kvmctl.planner.protection).
    protect_emulator: bool | None = None
    added_later = ("protect_emulator",)

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value:
                raise ValueError("must list at least one CPU")
            if len(set(value)) != len(value):
                raise ValueError("lists a CPU twice")
            return sorted(value)
        return value

    @model_validator(mode="after")
    def _realtime_is_dedicated(self) -> Cpu:
        # A FIFO vCPU on a shared pCPU starves every other vCPU there: only a
        # dedicated CPU can host it without breaking someone else's guarantee.
        if self.realtime is not None and self.placement != "dedicated":
            raise ValueError("realtime needs placement: dedicated")
        if self.placement == "dedicated" and self.limit is not None:
            raise ValueError("a dedicated CPU is not capped: remove limit or use shared")
        if self.protect_emulator and self.placement != "dedicated":
            # The protection is the domain's CPU weight, which for a shared VM
            # would also weigh its vCPUs against its neighbours'.
            raise ValueError("protect_emulator needs placement: dedicated")
        if self.protect_emulator and self.shares is not None:
            raise ValueError(
                "shares and protect_emulator both set the domain's CPU weight: drop one"
            )
        return self


HugepageSize = Literal[2097152, 1073741824]


def _hugepage_size(value: Any) -> Any:
    if value is None or value is False:
        return None
    if value is True:
        return 2 * 1024 * 1024
    size = parse_size(value)
    if size not in (2 * 1024**2, 1024**3):
        raise ValueError("must be 2MiB or 1GiB (the x86-64 hugepage sizes)")
    return size


class Memory(Model):
    size: Size = 256 * 1024**2
    hugepages: Annotated[HugepageSize | None, BeforeValidator(_hugepage_size)] = None
    soft_limit: Size | None = None
    hard_limit: Size | None = None
    locked: bool = False

    @field_validator("size")
    @classmethod
    def _size(cls, value: int) -> int:
        if value < 64 * 1024**2:
            raise ValueError("must be at least 64MiB")
        if value % (1024**2):
            raise ValueError("must be a whole number of MiB")
        return value

    @model_validator(mode="after")
    def _fits_pages(self) -> Memory:
        if self.hugepages and self.size % self.hugepages:
            raise ValueError("size must be a multiple of the hugepage size")
        return self


# Built-in images that boot from their own disk, like a downloaded cloud image
# (kvmctl.host.images.DISK_FLAVOURS); the others boot a kernel directly.
DISK_BUILTINS = ("debian-12",)


class Image(Model):
    builtin: Literal["test-guest", "test-guest-rt", "debian-12"] | None = None
    path: str | None = None
    cloud_init: dict[str, Any] | None = None

    @property
    def cloud(self) -> bool:
        """Booted from its own disk, an overlay on a backing image, with a
        cloud-init seed: a `path` image or a disk built-in."""
        return self.path is not None or self.builtin in DISK_BUILTINS

    @model_validator(mode="after")
    def _one_source(self) -> Image:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of builtin or path")
        if self.cloud_init is not None and not self.cloud:
            raise ValueError(
                "cloud_init goes with a cloud image (path, or builtin: debian-12), "
                f"not with builtin: {self.builtin}"
            )
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError(f"path '{self.path}' must be absolute")
        return self


class Disk(Model):
    size: Size = 1024**3
    iops_limit: Annotated[int, Field(ge=1)] | None = None
    bps_limit: Rate | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, value: int) -> int:
        if value < 16 * 1024**2:
            raise ValueError("must be at least 16MiB")
        return value


class Display(Model):
    width: Annotated[int, Field(ge=320, le=7680)] = 1024
    height: Annotated[int, Field(ge=200, le=4320)] = 768


class Watchdog(Model):
    action: Literal["reset", "poweroff", "shutdown", "pause", "none", "dump", "inject-nmi"] = (
        "reset"
    )
    model: Literal["i6300esb", "itco"] = "i6300esb"


class Ready(Model):
    probe: str = "agent"
    timeout: Duration = 60.0
    # A boot deadline: ready within this long of the start of apply (or of the
    # supervisor's decision to restart). A miss is reported; it fails the
    # apply (rolled back) only with deadline_fatal.
    deadline: Duration | None = None
    deadline_fatal: bool = False

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be longer than 0 s")
        return value

    added_later = ("deadline", "deadline_fatal")

    @field_validator("probe")
    @classmethod
    def _probe(cls, value: str) -> str:
        if value in ("agent", "cloud-init"):
            return value
        if value.startswith("serial:") and len(value) > len("serial:"):
            marker = value[len("serial:") :]
            if not marker.isprintable():
                raise ValueError("the serial marker must be printable text")
            return value
        raise ValueError("must be 'agent', 'cloud-init' or 'serial:<marker>'")

    @property
    def serial_marker(self) -> str | None:
        return self.probe[len("serial:") :] if self.probe.startswith("serial:") else None


class Boot(Model):
    # warm: start from a saved state of the VM taken once it first became ready
    # (memory and disk together), instead of booting it; disk writes made after
    # that point are discarded on every warm start (docs/operate.md).
    mode: Literal["cold", "warm"] = "cold"


class Restart(Model):
    policy: Literal["always", "on-failure", "never"] = "on-failure"
    max: Annotated[int, Field(ge=0)] = 5
    window: Duration = 60.0


class Shutdown(Model):
    # How long a guest gets to shut down cleanly (its agent, else the ACPI power
    # button) before it is powered off, on destroy and on a restarting update.
    # Default: 60 s for a cloud image (a real OS with file systems to flush), 0
    # for the built-in test guests (a kernel and an initramfs: nothing to lose).
    timeout: Duration | None = None


class Migration(Model):
    max_downtime: Duration | None = None
    bandwidth: Rate | None = None
    auto_converge: bool = True
    postcopy: bool = False
    multifd: Annotated[int, Field(ge=1, le=64)] | None = None
    compression: Literal["zlib", "zstd", "xbzrle"] | None = None
    completion_timeout: Duration | None = None
    on_timeout: Literal["abort", "postcopy"] = "abort"


class VM(Model):
    role: str | None = None
    criticality: Literal["safety", "high", "normal"] = "normal"
    host: str | None = None
    vcpus: Annotated[int, Field(ge=1, le=64)] = 1
    cpu: Cpu = Field(default_factory=Cpu)
    memory: Memory = Field(default_factory=Memory)
    image: Image = Field(default_factory=lambda: Image(builtin="test-guest"))
    disk: Disk = Field(default_factory=Disk)
    networks: list[AttachmentIn] = Field(default_factory=list)
    display: Display | None = None
    watchdog: Watchdog | None = None
    ready: Ready = Field(default_factory=Ready)
    restart: Restart = Field(default_factory=Restart)
    depends_on: list[str] = Field(default_factory=list)
    migration: Migration = Field(default_factory=Migration)
    shutdown: Shutdown = Field(default_factory=Shutdown)
    boot: Boot = Field(default_factory=Boot)
    added_later = ("shutdown", "boot")

    @property
    def shutdown_grace(self) -> float:
        """Seconds for a clean shutdown before power-off (see Shutdown)."""
        if self.shutdown.timeout is not None:
            return self.shutdown.timeout
        return 60.0 if self.image.cloud else 0.0

    @field_validator("role")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}", value):
            raise ValueError("must be letters, digits, spaces, '.', '_' or '-' (max 64)")
        return value

    # Kept apart from the fields above so each later addition is a line of its own.
    heartbeat: Heartbeat | None = None
    added_later = (*added_later, "heartbeat")  # type: ignore[assignment]  # typed tuple[str]


class Cockpit(Model):
    name: Name
    host: HostSection = Field(default_factory=HostSection)
    hosts: dict[str, HostRef] = Field(default_factory=dict)
    networks: dict[str, Network] = Field(default_factory=dict)
    vms: dict[str, VM] = Field(min_length=1)
    channels: list[Channel] = Field(default_factory=list)
    safe_state: SafeState | None = None
    added_later = ("channels", "safe_state")
