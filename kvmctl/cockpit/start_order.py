"""Run one step per VM in parallel, each VM's as soon as the VMs it depends
on are done, not when its whole level is: a slow sibling does not hold back
a dependant. Once one step fails, steps not yet begun are skipped."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class _DependencyFailed(Exception):
    """A VM was not started because a VM it depends on (or a sibling) failed."""


def run_in_order(
    order: list[str], depends_on: Callable[[str], Iterable[str]], step: Callable[[str], T]
) -> dict[str, T]:
    """`order` lists the VMs level by level, dependencies first."""
    failed = threading.Event()
    futures: dict[str, Future[T]] = {}
    with ThreadPoolExecutor(max_workers=len(order)) as pool:
        for vm in order:
            deps = [futures[d] for d in depends_on(vm) if d in futures]
            futures[vm] = pool.submit(_after, deps, vm, step, failed)
    errors = [e for f in futures.values() if (e := f.exception()) is not None]
    if errors:
        # Report the failure itself, not the VMs skipped because of it.
        raise next((e for e in errors if not isinstance(e, _DependencyFailed)), errors[0])
    return {vm: f.result() for vm, f in futures.items()}


def _after(deps: list[Future[T]], vm: str, step: Callable[[str], T], failed: threading.Event) -> T:
    for dep in deps:
        if dep.exception() is not None:
            raise _DependencyFailed(vm)
    if failed.is_set():
        raise _DependencyFailed(vm)
    try:
        return step(vm)
    except BaseException:
        failed.set()  # VMs not yet started need not start: all will be undone
        raise
