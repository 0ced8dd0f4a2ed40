"""Node-name patterns (`--exclude`): compiled, checked to match, and turned into ModelOpt's exact-name form."""

from __future__ import annotations

import re

import onnx

from danet_deploy.errors import OptionError


def compile_patterns(patterns: list[str]) -> list[re.Pattern[str]]:
    """`--exclude` node patterns (names or regular expressions); a bad one is a one-line BadInputError."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, OverflowError, RecursionError) as exc:
            raise OptionError("exclude", pattern, f"not a valid regular expression ({exc})") from None
    return compiled


def check_patterns_match(model: onnx.ModelProto, patterns: list[str], path: object) -> None:
    """Each `--exclude` pattern must select a node (`re.match` on node names, as ModelOpt applies them): one that
    selects none would be reported as kept in higher precision while nothing was."""
    names = [node.name for node in model.graph.node]
    for pattern, compiled in zip(patterns, compile_patterns(patterns)):
        if not any(compiled.match(name) for name in names):
            raise OptionError("exclude", pattern, f"matches no node of {path} (`inspect --json` lists them)")


def exact_names(names: list[str]) -> list[str]:
    """Node names as anchored regular expressions (ModelOpt's nodes_to_exclude are `re.match` patterns)."""
    return [f"^{re.escape(n)}$" for n in names]
