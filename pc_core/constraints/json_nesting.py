"""Nesting bounds of json_schema.py's translation: how deep a schema's free values nest (a state budget shared
by all of them, the copies the automaton builder makes counted), their placeholders filled once decided, and
`$ref` pointers into the document."""

from __future__ import annotations

from typing import Any

from pc_core.constraints.json_values import any_value
from pc_core.constraints.regex import Node
from pc_core.errors import ConstraintError

FREE_STATES = 16_000  # automaton states (before minimising, copies counted) a schema's free values may take
ANY_OBJECT_STATES = 2_000  # the same for {"json": true} (JsonSchema.any_object): 6 levels, kept small
FREE_NESTING = 8  # document levels a free value (or a recursive $ref) may reach (never fewer than its floor)
DEEPER_STATES = 20_000  # states of shared expansions when recursion goes past max_depth (else it does not)


def free_depths(uses: list[tuple[int, ...]], budget: int = FREE_STATES) -> list[int]:
    """The nesting of each free value (`uses`: (document level it starts at, least nesting[, copies of it
    in the automaton, 1 by default])): one common depth, as deep as the values fit `budget` states together,
    each within FREE_NESTING document levels (FREE_NESTING - 1 inside it) and never under its floor."""
    size = lambda d: 60 * 2**d - 34  # noqa: E731  (states of any_value(d), compact)
    best = [use[1] for use in uses]
    for depth in range(min(best, default=0) + 1, FREE_NESTING):  # at most FREE_NESTING - 1 inside
        found = [max(use[1], min(FREE_NESTING - use[0], depth)) for use in uses]
        if sum(size(d) * (use[2] if len(use) > 2 else 1) for d, use in zip(found, uses)) > budget:
            break
        best = found
    return best


def copies_of(root: Node) -> dict[int, int]:
    """How many times the automaton builder (char_nfa.NFA.build) copies each node of the IR, by id: the IR
    is a DAG (an object's optional members share their continuations), and a bounded repetition is copied
    once per repetition."""

    def parts(node: Node) -> list[tuple[Node, int]]:
        if node[0] in ("seq", "alt"):
            return [(x, 1) for x in node[1]]
        if node[0] == "list":
            return [(node[1], 1), (node[2], 1)]
        if node[0] == "rep":
            return [(node[1], node[3] if node[3] is not None else node[2] + 1)]
        return []

    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:  # post-order, iteratively (the IR nests deeply)
        node, done = stack.pop()
        if done:
            order.append(node)
        elif id(node) not in seen:
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((x, False) for x, _ in parts(node))
    copies = {id(root): 1}
    for node in reversed(order):  # every parent before its parts
        for x, k in parts(node):
            copies[id(x)] = copies.get(id(x), 0) + copies.get(id(node), 0) * k
    return copies


class Free:
    """A free value's place in the IR until schema_ir knows how deep the free values may nest."""

    def __init__(self, at: int, floor: int) -> None:
        self.at, self.floor = at, floor


def fill_frees(node: Node, depths: dict[int, int], space: Node) -> Node:
    """`node` with each free value's placeholder replaced by any_value at its depth (`depths` by id of the
    Free; its floor where absent). The IR is a DAG: each shared part is filled once."""
    memo: dict[int, Node] = {}

    def walk(item: Node) -> Node:
        found = memo.get(id(item))
        if found is None:
            kind = item[0]
            if kind == "sub" and isinstance(item[1], Free):
                found = any_value(depths.get(id(item[1]), item[1].floor), space)
            elif kind in ("seq", "alt"):
                parts = tuple(walk(x) for x in item[1])
                found = item if all(a is b for a, b in zip(parts, item[1])) else (kind, parts)
            elif kind == "rep":
                body = walk(item[1])
                found = item if body is item[1] else ("rep", body, item[2], item[3])
            elif kind == "list":
                body, sep = walk(item[1]), walk(item[2])
                found = item if body is item[1] and sep is item[2] else ("list", body, sep)
            else:
                found = item
            memo[id(item)] = found
        return found

    return walk(node)


def lookup(root: Any, ref: Any, path: str) -> Any:
    """The part of the document `root` that the `$ref` pointer `ref` names (#/a/b, escapes ~0 ~1)."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise ConstraintError(path, "only references into the same document (#/...) are supported")
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ConstraintError(path, f"the reference {ref!r} does not resolve")
    return node
