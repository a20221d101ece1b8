"""kvmctl's own state on the host: where it lives (`paths`)."""
