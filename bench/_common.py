"""Shared by the benchmarks: cockpit spec variants, and recording figures in
bench/RESULTS.md. Not a benchmark itself (`make bench` skips `_*.py`)."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
EXAMPLE = REPO / "examples" / "cockpit.yaml"


def spec_variant(spec_path: Path, set_name: str, keep: set[str] | None = None) -> dict[str, Any]:
    """A cockpit spec renamed to `set_name`, without networks (no bridges to
    collide with other runs), keeping only the VMs in `keep` (all when None);
    dependencies on dropped VMs are dropped with them."""
    data: dict[str, Any] = yaml.safe_load(spec_path.read_text())
    data["name"] = set_name
    data.pop("networks", None)
    for name, vm in list(data["vms"].items()):
        vm.pop("networks", None)
        if keep is not None and name not in keep:
            del data["vms"][name]
    for vm in data["vms"].values():
        deps = [d for d in vm.get("depends_on", []) if d in data["vms"]]
        if deps:
            vm["depends_on"] = deps
        else:
            vm.pop("depends_on", None)
    return data


def write_spec(data: dict[str, Any]) -> Path:
    """The spec in a fresh temporary directory."""
    out = Path(tempfile.mkdtemp(prefix="kvmctl-bench-")) / "spec.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def record(section: str, intro: str, block: str) -> None:
    """Append a block to section `## {section}` of RESULTS.md, creating the
    section (with `intro` under its title) or the file when missing."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    lines = text.splitlines(keepends=True)
    title = f"## {section}"
    start = next((i for i, ln in enumerate(lines) if ln.strip() == title), None)
    if start is None:
        text = text.rstrip("\n") + f"\n\n{title}\n\n{intro}\n\n" + block
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        head = "".join(lines[:end]).rstrip("\n") + "\n\n"
        tail = "".join(lines[end:])
        text = head + block + ("\n" + tail if tail else "")
    RESULTS.write_text(text)


def result_block(
    what: str, virt_type: str, others: int, load: str, body: str, table: str, notes: list[str]
) -> str:
    """One dated entry for RESULTS.md: a heading with the host conditions, a
    paragraph of context, the table, and the notes as a list."""
    tcg = " (TCG)" if virt_type == "qemu" else ""
    head = (
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {what}, domain type {virt_type}{tcg}, "
        f"{os.cpu_count()} CPUs, {others} other domains running at start, {load}, "
        f"{platform.node()}"
    )
    return f"{head}\n\n{body}\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def domain_type(domain: str, uri: str = "qemu:///system") -> str:
    """The domain's type: kvm, or qemu when it runs under TCG."""
    conn = libvirt.open(uri)
    try:
        return str(conn.lookupByName(domain).XMLDesc(0).split("type='", 1)[1].split("'", 1)[0])
    finally:
        conn.close()


def running_domains(uri: str = "qemu:///system") -> int:
    """How many domains run on the host: a bench's neighbours it did not start."""
    conn = libvirt.open(uri)
    try:
        return len(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
    finally:
        conn.close()


def destroy_and_sweep(spec: Path, set_name: str, uri: str = "qemu:///system") -> None:
    """Destroy a bench's set, then remove whatever a failed destroy left, and say so."""
    from kvmctl import cockpit
    from tests.integration.cockpit_helpers import sweep

    try:
        cockpit.destroy(spec, uri)
    finally:
        left = sweep(set_name)
        if left:
            print(f"removed leftovers: {left}", file=sys.stderr)
