"""The cockpit verbs: plan, apply, status, destroy, xml."""

from __future__ import annotations
