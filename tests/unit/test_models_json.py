"""JSON helpers: what a job may return is always stored, as JSON or as its repr."""

from __future__ import annotations

import pytest

from tqueues import models

VALUES = [None, True, 0, -2**63, 2**64 - 1, 2**64, -2**63 - 1, 1.5, "plain", "é", "\ud800", [1, {2: 3}],
          {"a": {"b": [None]}}, {1, 2}, object, b"bytes"]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_json_text_is_the_text_of_to_jsonable_and_always_parses(value: object) -> None:
    text = models.json_text(value)
    assert text == models.dumps_str(models.to_jsonable(value))
    models.loads(text)


@pytest.mark.parametrize("value, stored", [(2**64, repr(2**64)), ("\ud800", repr("\ud800")), ({1, 2}, repr({1, 2})),
                                           ([1, {2: 3}], [1, {2: 3}]), ("é", "é"), (7, 7), (None, None)], ids=repr)
def test_to_jsonable_keeps_what_json_carries_and_reprs_the_rest(value: object, stored: object) -> None:
    assert models.to_jsonable(value) == stored


def test_dumps_writes_non_string_keys_as_strings() -> None:
    assert models.loads(models.dumps({1: "a", "b": {2.5: None}})) == {"1": "a", "b": {"2.5": None}}
