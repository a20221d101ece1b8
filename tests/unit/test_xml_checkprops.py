"""Every declared property of every model is exercised by the samples.

A field added to a model without a sample setting it fails here, so the
round-trip, golden and schema tests always cover the whole model.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Iterator

import pytest

import kvmctl.xml
from kvmctl.xml import XMLModel
from kvmctl.xml.base import PROP_KEY
from tests.unit.test_xml_samples import SAMPLES

pytestmark = pytest.mark.unit


def _model_classes() -> set[type[XMLModel]]:
    for info in pkgutil.iter_modules(kvmctl.xml.__path__, "kvmctl.xml."):
        importlib.import_module(info.name)
    found: set[type[XMLModel]] = set()
    pending = list(XMLModel.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        # Tests define throwaway models of their own; only the package counts.
        if cls.__module__.startswith("kvmctl.xml."):
            found.add(cls)
    return found


def _walk(obj: object) -> Iterator[XMLModel]:
    if isinstance(obj, XMLModel):
        yield obj
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            yield from _walk(getattr(obj, f.name))
    elif isinstance(obj, tuple):
        for item in obj:
            yield from _walk(item)


def _present(model: XMLModel, field: dataclasses.Field[object]) -> bool:
    # "Exercised" means the value reaches the XML: None, () and an unset
    # flag do not; False does for yes/no attributes.
    value = getattr(model, field.name)
    if isinstance(value, bool):
        return value or field.metadata[PROP_KEY].kind != "flag"
    return value is not None and value != ()


def test_every_declared_property_is_set_by_some_sample() -> None:
    exercised: set[tuple[type, str]] = set()
    for sample in SAMPLES.values():
        for model in _walk(sample):
            for f in dataclasses.fields(model):  # type: ignore[arg-type]
                if _present(model, f):
                    exercised.add((type(model), f.name))
    declared = {
        (cls, f.name)
        for cls in _model_classes()
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    }
    missing = sorted(f"{cls.__name__}.{name}" for cls, name in declared - exercised)
    assert not missing, f"properties no sample sets: {', '.join(missing)}"


def test_every_model_class_is_exported() -> None:
    exported = {getattr(kvmctl.xml, name) for name in kvmctl.xml.__all__}
    hidden = sorted(cls.__name__ for cls in _model_classes() - exported)
    assert not hidden, f"models missing from kvmctl.xml.__all__: {hidden}"
