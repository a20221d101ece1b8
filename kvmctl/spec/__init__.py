"""The cockpit spec: YAML -> frozen typed models. Nothing here touches the host."""

from kvmctl.spec.loader import load_spec, parse_spec, spec_hash
from kvmctl.spec.models import VM, Cockpit
from kvmctl.spec.networks import Network

__all__ = ["VM", "Cockpit", "Network", "load_spec", "parse_spec", "spec_hash"]
