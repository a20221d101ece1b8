"""pytest plugin shipped with kvmctl (registered through the `pytest11` entry point).

Fixtures for users' own CI as much as for kvmctl's tests:

- `kvmctl_lab`: one disposable second libvirt host for the session (see
  `kvmctl.testing.lab`): `kvmctl_lab.uri` is its libvirt URI, reachable only
  over the lab's own veth. Needs root.
- `kvmctl_lab_factory`: a fresh lab per call, for tests that break it (kill its
  libvirtd, cut its link) or need one that shares this host's storage
  (`kvmctl_lab_factory(shared_storage=True)`); all removed after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from kvmctl.testing.lab import LabHost, LabState


@pytest.fixture(scope="session")
def kvmctl_lab() -> Iterator[LabState]:
    lab = LabHost()
    try:
        yield lab.up()
    finally:
        lab.down()


@pytest.fixture
def kvmctl_lab_factory() -> Iterator[Callable[..., LabState]]:
    made: list[LabHost] = []

    def make(shared_storage: bool = False) -> LabState:
        lab = LabHost(shared_storage=shared_storage)
        made.append(lab)
        return lab.up()

    try:
        yield make
    finally:
        for lab in made:
            lab.down()
