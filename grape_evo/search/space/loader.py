"""The hardened YAML reader of search-space files.

YAML is read with a :class:`yaml.SafeLoader` subclass that additionally rejects duplicate
keys, recursive aliases and documents that expand to more than :data:`MAX_NODES` nodes (alias
"billion laughs" bombs), and reads ``1e-4`` as a float (plain YAML 1.1 reads it as a string).
Files above :data:`MAX_FILE_BYTES` are not read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from grape_evo.search.space.errors import SpaceError
from grape_evo.search.space.parser import parse_space
from grape_evo.search.space.values import SearchSpace

__all__ = ["MAX_FILE_BYTES", "MAX_NODES", "load_space", "load_yaml_text"]

MAX_NODES = 10_000
"""Largest YAML document accepted, in nodes after alias expansion (guards alias bombs)."""
MAX_FILE_BYTES = 1_000_000
"""Largest search-space file read."""


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, like YAML 1.2 and JSON."""


_GuardedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_nodes(root: yaml.Node, limit: int = MAX_NODES) -> None:
    """Reject alias bombs, recursive aliases and duplicate keys in a composed document."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    # (node, children iterator, running total): an explicit stack, so depth costs no recursion
    stack: list[tuple[yaml.Node, Iterator[yaml.Node], int]] = []

    def children(node: yaml.Node) -> Iterator[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return iter(node.value)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in seen:
                        mark = key.start_mark
                        raise ValueError(
                            f"duplicate key '{key.value}' (line {mark.line + 1}, "
                            f"column {mark.column + 1})"
                        )
                    seen.add(key.value)
            return iter([n for pair in node.value for n in pair])
        return iter(())

    stack.append((root, children(root), 1))
    on_path.add(id(root))
    while stack:
        node, it, total = stack[-1]
        child = next(it, None)
        if child is None:
            stack.pop()
            on_path.discard(id(node))
            sizes[id(node)] = total
            if stack:
                parent, pit, ptotal = stack[-1]
                stack[-1] = (parent, pit, ptotal + total)
                if ptotal + total > limit:
                    raise ValueError(
                        f"the document expands to more than {limit} nodes (alias bomb?)"
                    )
            continue
        if id(child) in sizes:
            total += sizes[id(child)]
            stack[-1] = (node, it, total)
            if total > limit:
                raise ValueError(f"the document expands to more than {limit} nodes (alias bomb?)")
            continue
        if id(child) in on_path:
            raise ValueError("recursive alias (a node that contains itself)")
        on_path.add(id(child))
        stack.append((child, children(child), 1))
    if sizes[id(root)] > limit:
        raise ValueError(f"the document expands to more than {limit} nodes (alias bomb?)")


def load_yaml_text(text: str, source: str) -> Any:
    """The YAML document in ``text``, read by the guarded loader (None for an empty one).

    Any problem is a SpaceError starting with ``source`` (``<source>: invalid YAML: ...``).
    """
    try:
        loader = _GuardedLoader(text)  # the reader already rejects control characters
    except yaml.YAMLError as err:
        raise SpaceError(f"{source}: invalid YAML: {' '.join(str(err).split())}") from None
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise SpaceError(f"{source}: invalid YAML: nested too deeply") from None
        if node is None:
            return None
        try:
            _check_nodes(node)
        except ValueError as err:
            raise SpaceError(f"{source}: invalid YAML: {err}") from None
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise SpaceError(f"{source}: invalid YAML: {err}") from None
    finally:
        loader.dispose()


def load_space(path: str | Path) -> SearchSpace:
    """Read, parse and validate a search-space YAML file (errors start with ``path``)."""
    source = str(path)
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpaceError(
                f"{source}: file too large ({size} bytes; at most {MAX_FILE_BYTES} accepted)"
            )
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise SpaceError(f"{source}: cannot read search space ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise SpaceError(f"{source}: cannot read search space (not UTF-8: {err})") from None
    data = load_yaml_text(text, source)
    return parse_space(data, source=source, default_name=p.stem, base_dir=p.parent)
