"""The spec's channels between VMs: shared-memory regions, host-guest serial
ports and vsock (docs/channels.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    field_validator,
)

from kvmctl.spec.types import (
    Model,
    Name,
    Size,
)

MIB = 1024**2
# One sentence, shown wherever `access: ro` is refused.
RO_REFUSED = (
    "'ro' cannot be enforced: QEMU's ivshmem-plain device (libvirt <shmem>) maps the "
    "region writable into every member and offers no read-only mapping, so declare the "
    "member rw and let only the writer write"
)


class ShmMember(Model):
    vm: str
    access: Literal["rw", "ro"] = "rw"

    @field_validator("access")
    @classmethod
    def _enforced(cls, value: str) -> str:
        if value == "ro":
            raise ValueError(RO_REFUSED)
        return value


def _member(value: Any) -> Any:
    return {"vm": value} if isinstance(value, str) else value


ShmMemberIn = Annotated[ShmMember, BeforeValidator(_member)]


class Channel(Model):
    """`shm`: a region shared by `members`; `serial`: a virtio-serial port
    between the host and `vm`; `vsock`: an AF_VSOCK device for `vm`. Which
    fields go with which kind is checked in `kvmctl.spec.semantics`."""

    kind: Literal["shm", "serial", "vsock"]
    name: Name
    size: Size | None = None
    members: list[ShmMemberIn] | None = None
    vm: str | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, value: int | None) -> int | None:
        if value is None:
            return value
        if value < MIB or value % MIB:
            raise ValueError("must be a whole number of MiB, at least 1MiB (write it like '4MiB')")
        if value & (value - 1):
            raise ValueError(
                "must be a power of two ('1MiB', '2MiB', '4MiB', ...): ivshmem maps the "
                "region as one PCI BAR, and a BAR's size is a power of two"
            )
        return value
