"""The spec's building blocks: the base model every section derives from, and
the constrained scalar types (names, sizes, durations, rates, CPU ids)."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from kvmctl.spec.units import parse_duration, parse_percent, parse_rate, parse_size

# A name that is safe as a libvirt domain name, a file name, a metadata value and
# a shell word: lower-case letters, digits and inner dashes. No XML or shell
# metacharacters can pass.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
# Linux interface names: at most 15 bytes, no '/', ':' or white space.
BRIDGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
DEFAULT_IMAGE_DIRS = ("/var/lib/kvmctl/images", "/var/lib/libvirt/images")


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"'{value}' is not a valid name: use 1-32 lower-case letters, digits and inner "
            "dashes, starting with a letter"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Percent = Annotated[float, BeforeValidator(parse_percent)]
Rate = Annotated[int, BeforeValidator(parse_rate)]
CpuId = Annotated[int, Field(ge=0, le=4095)]


def _vcpu_limit(value: float) -> float:
    if not 1 <= value <= 100:
        raise ValueError("must be between 1% and 100% of each vCPU")
    return value


# A CPU cap: the share of each vCPU's time it may use.
VcpuLimit = Annotated[float, BeforeValidator(parse_percent), AfterValidator(_vcpu_limit)]
VlanId = Annotated[int, Field(ge=1, le=4094)]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    # Fields added after specs were hashed into running domains' metadata and
    # snapshot records: left out of a dump while at their default, so a spec
    # that does not use them keeps the hash it had (kvmctl.spec.loader.spec_hash)
    # and its snapshots revert without --force after an upgrade.
    added_later: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_unused_additions(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        for name in self.added_later:
            info = type(self).model_fields[name]
            if getattr(self, name) == info.get_default(call_default_factory=True):
                data.pop(info.alias or name, None)
        return data
