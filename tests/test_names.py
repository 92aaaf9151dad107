"""Names a reader can guess: each module's __all__ is exactly its public definitions (nothing re-exported, no
imported modules), and every BIMTConfig field is documented in its docstring with the paper's symbol where it has
one."""
import ast
import dataclasses
import inspect
import re

import pytest

import bimt_core as bc
import bimt_data as bd
import bimt_ensemble as be
import bimt_seeing as bs


def public_definitions(module) -> list:
    """Module-level classes, functions and constants not starting with '_', in source order."""
    names = []
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name) and t.id != "__all__"]
    return [n for n in names if not n.startswith("_")]


@pytest.mark.parametrize("module", [bc, bs, bd, be])
def test_all_lists_exactly_the_public_definitions(module):
    assert sorted(module.__all__) == sorted(public_definitions(module))
    assert all(getattr(module, name) is not None for name in module.__all__)
    assert len(set(module.__all__)) == len(module.__all__)
    assert not {"np", "torch", "nn", "F", "csv", "gzip", "json", "bc"} & set(module.__all__)


def test_every_config_field_is_documented():
    doc = " ".join(bc.BIMTConfig.__doc__.split())
    for f in dataclasses.fields(bc.BIMTConfig):
        assert re.search(rf"\b{f.name}\b", doc), f.name
    # the paper's symbols, next to the fields that hold them
    assert "lam: lambda" in doc and "weight_factor: A," in doc and "l0: l0," in doc
    # and the unit of length the costs are counted in
    assert "A layer spans length 1" in doc


def test_history_fields_are_documented():
    doc = " ".join(bc.History.__doc__.split())
    for name in bc.History():
        assert re.search(rf"\b{name}\b", doc), name
