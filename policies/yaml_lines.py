"""A YAML loader for hand-written files: lines kept, no base-60 numbers, no duplicate keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from common.errors import ClassguardError

__all__ = [
    "LineDict",
    "LineList",
    "LineLoader",
    "YamlError",
    "key_line",
    "item_line",
    "load_yaml",
    "parse_yaml",
]


class YamlError(ClassguardError):
    """A file that is not valid YAML (or has a duplicate key); str() is `FILE:LINE: message`."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line
        self.message = message


class LineDict(dict):
    """A mapping as loaded: `.line` where it starts, `.key_lines[key]` the line of each key."""

    line: int
    key_lines: dict[Any, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line = 0
        self.key_lines = {}


class LineList(list):
    """A sequence as loaded: `.line` where it starts, `.item_lines[i]` where item i is (1-based)."""

    line: int
    item_lines: list[int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.line = 0
        self.item_lines = []


def describe_value(value: Any) -> str:
    """A loaded YAML value in words, for error messages ("a mapping", "true/false (...)")."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false (yes, no, on and off are booleans in YAML: quote them)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def key_line(mapping: Any, key: Any, default: int = 0) -> int:
    """The line of `key` in a loaded mapping (else the mapping's line); `default` for plain data."""
    if isinstance(mapping, LineDict):
        return mapping.key_lines.get(key, mapping.line or default)
    return default


def item_line(sequence: Any, index: int, default: int = 0) -> int:
    """The line of item `index` of a loaded sequence; `default` for plain data."""
    if isinstance(sequence, LineList) and index < len(sequence.item_lines):
        return sequence.item_lines[index]
    return getattr(sequence, "line", 0) or default


# YAML 1.1 reads `21:00` as the base-60 integer 1260 (and `1:30.5` as a float): useless in a file
# of opening hours. These are the SafeLoader patterns without their sexagesimal alternatives, so
# such scalars stay strings exactly as written. Booleans (`yes`, `no`, `on`, `off`) are untouched:
# `safe_search: off` loads as False and the callers read False as "off".
_INT = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


# Policies nest a few levels (classes, a class, its schedule, a window, its days); PyYAML builds
# nodes and values recursively, so a file nested thousands deep would end in RecursionError.
MAX_DEPTH = 64


class LineLoader(yaml.SafeLoader):
    """SafeLoader returning LineDict/LineList, with no base-60 numbers and no duplicate keys.

    A document nested deeper than MAX_DEPTH is refused at the line where it goes too deep.
    """

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"nested too deep (more than {MAX_DEPTH} levels)",
                    event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_line_mapping(self, node: yaml.MappingNode) -> Any:
        data = LineDict()
        data.line = node.start_mark.line + 1
        yield data
        # Duplicates are looked for among the keys written in this mapping; keys brought in by a
        # merge (`<<: *base`) may be overridden, as YAML intends.
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    "found an unhashable key (a list or mapping used as a key)",
                    key_node.start_mark,
                ) from None
            if key in seen:
                raise ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            data[key] = self.construct_object(value_node, deep=True)
            # A merged key keeps the line of the merge; one written here keeps its own line.
            data.key_lines[key] = seen.get(key, key_node.start_mark.line + 1)

    def construct_lenient_timestamp(self, node: yaml.ScalarNode) -> Any:
        # `2027-02-30` matches the timestamp pattern but is no date: keep the text, so that the
        # caller can say which key is wrong instead of the loader failing with a bare ValueError.
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)

    def construct_line_sequence(self, node: yaml.SequenceNode) -> Any:
        data = LineList()
        data.line = node.start_mark.line + 1
        yield data
        for child in node.value:
            data.append(self.construct_object(child, deep=True))
            data.item_lines.append(child.start_mark.line + 1)


LineLoader.add_constructor("tag:yaml.org,2002:map", LineLoader.construct_line_mapping)
LineLoader.add_constructor("tag:yaml.org,2002:seq", LineLoader.construct_line_sequence)
LineLoader.add_constructor("tag:yaml.org,2002:timestamp", LineLoader.construct_lenient_timestamp)

# add_implicit_resolver would only append; replace the int and float patterns in a private copy.
LineLoader.yaml_implicit_resolvers = {
    first: [
        (tag, _INT if tag == _INT_TAG else _FLOAT if tag == _FLOAT_TAG else regexp)
        for tag, regexp in resolvers
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Load one YAML document from `text`; errors are YamlError naming `source` and the line."""
    try:
        loader = LineLoader(text)  # its reader refuses control characters at once
    except yaml.reader.ReaderError as exc:
        line = text[:exc.position].count("\n") + 1
        raise YamlError(source, line, f"character #x{exc.character:04x} is not allowed in "
                                      "YAML (a control character)") from None
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem and "duplicate key" not in exc.problem:
            message = f"{message} ({exc.context})"
        raise YamlError(source, line, message) from None
    except yaml.YAMLError as exc:
        raise YamlError(source, 0, str(exc).strip() or "invalid YAML") from None
    finally:
        loader.dispose()


def load_yaml(path: Path | str) -> tuple[Any, str]:
    """Read and load a YAML file; returns (data, text). Unreadable or invalid: YamlError."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise YamlError(source, 0, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise YamlError(source, 0, f"cannot read: {exc.strerror or exc}") from None
    return parse_yaml(text, source), text
