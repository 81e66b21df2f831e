"""Run ids and names."""

from __future__ import annotations

import re

import pytest

from runstream import names
from runstream.errors import UsageError


def test_new_run_id_is_8_lowercase_base36_and_unique() -> None:
    ids = {names.new_run_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[0-9a-z]{8}", i) for i in ids)
    assert all(names.is_valid_run_id(i) for i in ids)


def test_new_run_name_is_adjective_noun_number() -> None:
    for _ in range(200):
        adjective, noun, number = names.new_run_name().split("-")
        assert adjective in names._ADJECTIVES and noun in names._NOUNS
        assert 1 <= int(number) <= 999
    assert len(set(names._ADJECTIVES)) >= 100 and len(set(names._NOUNS)) >= 100


@pytest.mark.parametrize("run_id", ["a", "ABC-def_123", "x" * 64, "0"])
def test_valid_ids(run_id: str) -> None:
    assert names.is_valid_run_id(run_id)
    assert names.validate_run_id(run_id) == run_id


@pytest.mark.parametrize(
    ("run_id", "why"),
    [
        ("", "empty"),
        ("x" * 65, "65 characters"),
        ("a b", "' '"),
        ("../etc", "'.', '/'"),
        ("ü", "'ü'"),
        (12345678, "int"),
        (None, "NoneType"),
    ],
)
def test_invalid_ids_raise_usage_error_saying_why(run_id: object, why: str) -> None:
    assert not names.is_valid_run_id(run_id)
    with pytest.raises(UsageError) as info:
        names.validate_run_id(run_id)
    assert why in str(info.value) and "letter, digit" in str(info.value)
