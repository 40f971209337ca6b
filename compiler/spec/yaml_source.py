"""Safe, bounded YAML loading that remembers where every value came from.

Specs are untrusted input. This loader:
  1. accepts only the YAML core types (no `!!python/...` or other explicit tags),
  2. bounds the file size, the nesting depth and the number of values after alias expansion
     (a "billion laughs" document is an error, not a hang),
  3. rejects duplicate mapping keys,
  4. returns plain Python values plus a table from YAML path to `Location`, so every later
     error (schema, expression, shape) can point at the offending text.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from ..errors import Location, SpecError, register_source

from ..limits import MAX_FILE_BYTES, MAX_YAML_DEPTH as MAX_DEPTH, MAX_YAML_VALUES as MAX_VALUES
_MERGE = "tag:yaml.org,2002:merge"

_CORE_TAGS = {
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "map", "seq")
}


@dataclass
class Source:
    """A loaded YAML document: its data and where each value (and each mapping key) was written."""

    file: str
    data: object
    locs: dict = field(default_factory=dict)  # path tuple -> Location of the value
    key_locs: dict = field(default_factory=dict)  # path tuple -> Location of the key naming it

    def loc(self, path: tuple, key: bool = False) -> Location | None:
        """Location of `path`, or of its nearest ancestor that has one."""
        table = self.key_locs if key else self.locs
        p = tuple(path)
        while True:
            if p in table:
                return table[p]
            if key and p in self.locs:
                return self.locs[p]
            if not p:
                return None
            p = p[:-1]


def _mark_loc(file: str, node: yaml.Node, path: tuple) -> Location:
    start, end = node.start_mark, node.end_mark
    length = end.index - start.index if end.line == start.line else 1
    return Location(file, start.line + 1, start.column + 1, path, max(1, length))


class _Builder:
    def __init__(self, src: Source):
        self.src = src
        self.count = 0
        self._scalars = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: tuple, depth: int):
        self.count += 1
        if self.count > MAX_VALUES:
            raise SpecError(f"document expands to more than {MAX_VALUES} values (aliases included)",
                            _mark_loc(self.src.file, node, path),
                            expected="a spec of bounded size; avoid deeply nested aliases")
        if depth > MAX_DEPTH:
            raise SpecError(f"nesting deeper than {MAX_DEPTH} levels", _mark_loc(self.src.file, node, path))
        if node.tag not in _CORE_TAGS:
            raise SpecError(f"YAML tag '{node.tag}' is not allowed", _mark_loc(self.src.file, node, path),
                            expected="plain YAML: mappings, lists, strings, numbers, booleans, null")
        self.src.locs[path] = _mark_loc(self.src.file, node, path)
        if isinstance(node, yaml.MappingNode):
            out = {}
            merged = {}
            for knode, vnode in node.value:
                if knode.tag == _MERGE:  # `<<: *base` or `<<: [*a, *b]`: explicit keys win
                    sources = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
                    for src in sources:
                        value = self.build(src, path, depth + 1)
                        if not isinstance(value, dict):
                            raise SpecError("a merge key (<<) needs a mapping or a list of mappings",
                                            _mark_loc(self.src.file, src, path))
                        for k, v in value.items():
                            merged.setdefault(k, v)
                    continue
                if not isinstance(knode, yaml.ScalarNode):
                    raise SpecError("mapping keys must be plain scalars", _mark_loc(self.src.file, knode, path))
                key = self._scalar(knode, path)
                if isinstance(key, bool) or key is None:
                    key = knode.value  # `on:`/`null:` keys mean the word, not a boolean
                if key in out:
                    first = self.src.key_locs.get(path + (key,))
                    raise SpecError(f"duplicate key '{key}'", _mark_loc(self.src.file, knode, path + (key,)),
                                    hint=f"first defined at {first}" if first else None)
                self.src.key_locs[path + (key,)] = _mark_loc(self.src.file, knode, path + (key,))
                out[key] = self.build(vnode, path + (key,), depth + 1)
            for k, v in merged.items():
                out.setdefault(k, v)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, path + (i,), depth + 1) for i, v in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.ScalarNode, path: tuple):
        try:
            return self._scalars.construct_object(node)
        except yaml.YAMLError as e:  # e.g. an int too large for a timestamp
            raise SpecError(f"bad scalar: {e}", _mark_loc(self.src.file, node, path)) from None


def load_yaml(text: str, file: str, register: bool = True) -> Source:
    """Parse `text` (named `file` in messages) into a `Source`; raises `SpecError` on any problem.

    `register=False` keeps the text out of the table errors quote lines from (for text that is
    already registered under `file`, such as one `--set` override among several)."""
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        raise SpecError(f"spec text is larger than {MAX_FILE_BYTES:,} bytes", Location(file, 1, 1))
    if register:
        register_source(file, text)
    src = Source(file, None)
    try:
        # compose() builds the node graph without constructing any Python object from tags.
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        raise SpecError(f"YAML syntax: {e.problem or e.context}", loc,
                        hint=e.context if e.problem and e.context else None) from None
    except yaml.YAMLError as e:
        raise SpecError(f"YAML: {e}", Location(file, 1, 1)) from None
    except RecursionError:
        raise SpecError(f"nesting deeper than {MAX_DEPTH} levels", Location(file, 1, 1)) from None
    if root is None:
        raise SpecError("empty spec", Location(file, 1, 1), expected="a mapping with 'nnspec: 1'")
    try:
        src.data = _Builder(src).build(root, (), 0)
    except RecursionError:
        raise SpecError(f"nesting deeper than {MAX_DEPTH} levels", Location(file, 1, 1)) from None
    return src
