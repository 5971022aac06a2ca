"""The mapping between a constraint's dotted path and pydantic's location tuple."""

from __future__ import annotations

from service.errors import constraint_path_to_loc, loc_to_path


def test_constraint_paths():
    assert constraint_path_to_loc("constraint.all[2].word_at") == ("constraint", "all", 2, "word_at")
    assert constraint_path_to_loc("constraint.keywords[0]") == ("constraint", "keywords", 0)
    assert loc_to_path(["body", "constraint", "all", 2, "word_at"]) == "body.constraint.all[2].word_at"
