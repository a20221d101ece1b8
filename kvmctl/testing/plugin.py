"""pytest plugin shipped with kvmctl (registered through the `pytest11` entry point).

Fixtures for disposable libvirt hosts and guests live here so users' own CI
can use them too.
"""

from __future__ import annotations
