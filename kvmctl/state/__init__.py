"""kvmctl's own state on the host: where it lives (`paths`), how it is written
(`statefile`), the durations of past snapshots and migrations (`history`), the
per-set lock (`setlock`) and the supervisor's state file (`supervisor`)."""
