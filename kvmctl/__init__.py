"""kvmctl: partitioned, mixed-criticality VM sets on Linux/KVM from one cockpit spec."""

__version__ = "0.1.0"
