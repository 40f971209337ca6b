"""Mutated specs produce clean nnspec errors (or load), never another exception or a traceback."""
from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnspec.compiler import load
from nnspec.compiler.errors import NnspecError

from test_errors import GOOD

TOKENS = ["", "0", "-1", "3", "1000000", "2.5", "true", "null", "x", "body", "stem", "conv2d", "relu", "add",
          "${width}", "${depth * 2}", "${i}", "${nope}", "${", "}", "[", "]", "{", ":", ",", "- ", "&a", "*a",
          "!!python/name:os.system", "'", '"', "in", "op", "block", "repeat", "scan", "N", "[N, 3]", "{op: relu}"]


def _attempt(text: str, tmp_path) -> None:
    p = tmp_path / "fuzz.yaml"
    p.write_text(text)
    try:
        load(str(p))
    except NnspecError as e:
        rendered = e.render()
        assert rendered and "Traceback" not in rendered


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["delete", "dup", "replace", "insert"]), st.integers(0, 10_000),
                          st.sampled_from(TOKENS)), min_size=1, max_size=4))
def test_text_mutations_give_clean_errors(tmp_path, edits):
    lines = GOOD.splitlines()
    for kind, pos, tok in edits:
        i = pos % len(lines)
        if kind == "delete" and len(lines) > 1:
            del lines[i]
        elif kind == "dup":
            lines.insert(i, lines[i])
        elif kind == "replace":
            words = lines[i].split(" ")
            words[pos % len(words)] = tok
            lines[i] = " ".join(words)
        else:
            col = pos % (len(lines[i]) + 1)
            lines[i] = lines[i][:col] + tok + lines[i][col:]
    _attempt("\n".join(lines) + "\n", tmp_path)


LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from(TOKENS), st.lists(st.integers(-2, 64), max_size=5), st.dictionaries(st.sampled_from(TOKENS), st.integers(0, 3), max_size=2))


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10_000), LEAVES)
def test_structured_mutations_give_clean_errors(tmp_path, which, value):
    data = yaml.safe_load(GOOD)
    paths = [p for p in _paths(data) if p]
    path = paths[which % len(paths)]
    node = data
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    _attempt(yaml.safe_dump(data, sort_keys=False), tmp_path)
