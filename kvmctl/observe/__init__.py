"""What runs and how it does, read-only: `status` (each VM's state and
pinning), `overview` (status across hosts with supervisor and history),
`audit` (the plan's promises checked on one host), `top` (vCPU time samples
and their sampler), `net` (bridges, ports and limits), `metrics` (pure:
metric families), `exporter` (Prometheus /metrics), `screens` (pure: the
guests' displays laid out as one picture) and `displays` (grabbing them)."""
