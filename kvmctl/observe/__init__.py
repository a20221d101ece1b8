"""What runs and how it does, read-only: `status` (each VM's state and
pinning), `overview` (status across hosts with supervisor and history),
`top` (vCPU time samples), `metrics` (pure: metric families), `exporter`
(Prometheus /metrics), `screens` (the guests' displays as one picture)."""
