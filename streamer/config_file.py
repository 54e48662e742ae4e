"""`streamer serve --config FILE`: the `serve` flags from a TOML file, checked as the flags are.

Every `serve` flag has a key: its name without the dashes in front, dashes inside as underscores
(`--metrics-port` is `metrics_port = 9464`). The file is the lowest layer above the built-in defaults:
a flag on the command line wins over the environment (STREAMER_<FLAG>), which wins over the file.
A key no flag has, a value of the wrong TOML type or out of the flag's range is refused with the file, the
line, the key and the expected form; nothing of a refused file is used.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A config file that cannot be used: the message names the file, the line and the key."""


def key_of(action: argparse.Action) -> str:
    """The file's key for a flag: `--metrics-port` -> metrics_port."""
    return action.option_strings[0][2:].replace("-", "_")


def flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The flags of `parser` a file may set, by key (not --help, not --config itself)."""
    return {key_of(a): a for a in parser._actions
            if a.option_strings and a.option_strings[0].startswith("--") and a.dest not in ("help", "config")}


def _line(text: str, key: str) -> int:
    """The line of a top-level `key = ...` in the file (1-based; 0 when not found, e.g. a quoted key)."""
    match = re.search(rf"^[ \t]*{re.escape(key)}[ \t]*=", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else 0


def _toml(value) -> str:
    """A value as TOML writes it (the effective configuration is printed as a file that reads back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def _expected(action: argparse.Action) -> tuple[tuple[type, ...], str]:
    """The TOML types a flag's key takes and how to say it."""
    if isinstance(action, argparse._StoreTrueAction):
        return (bool,), "true or false"
    kind = getattr(action.type, "kind", str)
    if action.choices is not None:
        return (str,), "one of " + ", ".join(json.dumps(str(c)) for c in action.choices)
    if kind is int:
        return (int,), getattr(action.type, "rule", "an integer")
    if kind is float:
        return (int, float), getattr(action.type, "rule", "a number")
    return (str,), getattr(action.type, "rule", "a string")


def _value(action: argparse.Action, raw):
    """The flag's value for a TOML value, or ArgumentTypeError saying what was expected."""
    if isinstance(action, argparse._AppendAction):
        if not isinstance(raw, list):
            raise argparse.ArgumentTypeError(f"must be an array, got {_toml(raw)}")
        return [_value(_Single(action), v) for v in raw]
    types, rule = _expected(action)
    if isinstance(raw, bool) and bool not in types or not isinstance(raw, types):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {_toml(raw)}")
    if isinstance(action, argparse._StoreTrueAction):
        return raw
    if isinstance(raw, float) and not math.isfinite(raw):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {_toml(raw)}")
    value = action.type(repr(raw) if isinstance(raw, float) else str(raw)) if action.type else raw
    if action.choices is not None and value not in action.choices:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {_toml(raw)}")
    return value


class _Single:
    """One element of a repeatable flag: its type and choices, read as a single value."""

    def __init__(self, action: argparse.Action):
        self.type, self.choices = action.type, action.choices


def load(path: str, parser: argparse.ArgumentParser) -> dict[str, object]:
    """The file's values by flag dest, checked; raise ConfigError naming the file, line and key."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
        table = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not TOML: {exc}") from None
    known = flags(parser)
    values = {}
    for key, raw in table.items():
        if key == "rules":
            values["rules"] = _rules(raw, text, path, known)
            continue
        if key == "tenants":  # a table of its own (streamer/tenants.py), not a flag
            values["tenants"] = _tenants(raw, text, path)
            continue
        where = f"config file {path}, line {_line(text, key)}, key {key}"
        action = known.get(key)
        if action is None:
            near = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
            hint = f"; did you mean {near[0]}?" if near else " (keys are the serve flags, dashes as underscores)"
            raise ConfigError(f"{where}: no `streamer serve` flag has this key{hint}")
        try:
            values[action.dest] = _value(action, raw)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return values


def _rule_line(text: str, n: int, key: str) -> int:
    """The line of `key = ...` in the n-th [[rules]] table (0-based), or of its header when the key is not found."""
    heads = [m.start() for m in re.finditer(r"^[ \t]*\[\[[ \t]*rules[ \t]*\]\]", text, re.MULTILINE)]
    if n >= len(heads):
        return _line(text, "rules")
    end = re.compile(r"^[ \t]*\[", re.MULTILINE).search(text, heads[n] + 2)
    stop = end.start() if end else len(text)
    match = re.compile(rf"^[ \t]*{re.escape(key)}[ \t]*=", re.MULTILINE).search(text, heads[n], stop)
    return text.count("\n", 0, match.start() if match else heads[n]) + 1


def _rules(raw, text: str, path: str, known: dict[str, argparse.Action]):
    """The [[rules]] tables as a rule_set.RuleSet, each key checked as its flag is; raise ConfigError."""
    from streamer import defaults, rule_set

    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"config file {path}, line {_line(text, 'rules')}, key rules: must be an array of tables "
                          f"([[rules]] with name = \"...\" and match = \"GLOB\" or prefix = \"...\")")
    convert = {"score": defaults.SCORES, "direction": defaults.DIRECTIONS}
    out, names = [], set()
    for n, table in enumerate(raw):
        def where(key: str) -> str:
            return f"config file {path}, line {_rule_line(text, n, key)}, rules[{n}] key {key}"
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where('name')}: every rule needs a name = \"...\" (a non-empty string), which its "
                              f"outliers and episodes carry")
        if name in names:
            raise ConfigError(f"{where('name')}: the rule name {name!r} is used twice")
        names.add(name)
        patterns = [k for k in ("match", "prefix") if k in table]
        if len(patterns) != 1:
            raise ConfigError(f"{where(patterns[1] if patterns else 'name')}: rule {name!r} needs exactly one of "
                              f"match = \"GLOB\" (fnmatch: * ? [...]) or prefix = \"...\"")
        pattern = table[patterns[0]]
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{where(patterns[0])}: must be a non-empty string, got {_toml(pattern)}")
        values, keys = [], []
        for key, value in table.items():
            if key in ("name", "match", "prefix"):
                continue
            if key in rule_set.NOT_PER_SERIES:
                raise ConfigError(f"{where(key)}: a rule cannot set {key}: {rule_set.NOT_PER_SERIES[key]}")
            if key not in rule_set.RULE_KEYS:
                near = difflib.get_close_matches(key, rule_set.RULE_KEYS, n=1)
                hint = f"; did you mean {near[0]}?" if near else ""
                raise ConfigError(f"{where(key)}: a rule takes name, match or prefix, and "
                                  f"{', '.join(rule_set.RULE_KEYS)}{hint}")
            try:
                flag = _value(known[key], value)
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{where(key)}: {exc}") from None
            if key in convert:
                flag = convert[key][flag]
            elif key == "exclude_limit" and flag == "warmup":
                flag = None
            values.append((key, flag))
            keys.append((key, value))
        out.append(rule_set.Rule(name, **{patterns[0]: pattern}, values=tuple(values), keys=tuple(keys)))
    return rule_set.RuleSet(tuple(out))


def _tenants(raw, text: str, path: str):
    """The [tenants] table, checked (streamer/tenants.py); ConfigError naming the line and key."""
    from streamer import tenants
    header = re.search(r"^[ \t]*\[\[?[ \t]*tenants[ \t.\]]", text, re.MULTILINE)
    start = header.start() if header else 0

    def where(key: str) -> str:
        entry = re.fullmatch(r"map\[(\d+)\]", key)
        if entry:  # the i-th [[tenants.map]]
            heads = list(re.finditer(r"^[ \t]*\[\[[ \t]*tenants\.map[ \t]*\]\]", text, re.MULTILINE))
            i = int(entry.group(1))
            at = heads[i].start() if i < len(heads) else start
            return f"config file {path}, line {text.count(chr(10), 0, at) + 1}"
        found = re.compile(rf"^[ \t]*(?:{re.escape(key)}[ \t]*=|\[\[?[ \t]*tenants\.{re.escape(key)}\b)",
                           re.MULTILINE).search(text, start) if key != "tenants" else None
        at = found.start() if found else start
        return f"config file {path}, line {text.count(chr(10), 0, at) + 1}"
    try:
        return tenants.parse(raw, where)
    except tenants.TenantsError as exc:
        raise ConfigError(str(exc)) from None


def effective(parser: argparse.ArgumentParser, args: argparse.Namespace, sources: dict[str, str]) -> str:
    """The configuration `serve` would run with, as a TOML file, each key with where its value came from."""
    lines = []
    rules = getattr(args, "rules", None)
    for key, action in flags(parser).items():
        value = getattr(args, action.dest)
        source = sources.get(action.dest, "default")
        if value is None:
            lines.append(f"# {key} is not set ({source})")
        else:
            lines.append(f"{key} = {_toml(value)}  # {source}")
    if rules:  # in their order: the first that matches a series key is its rule
        lines.append(f"# {len(rules)} rule(s), first match wins; a series matching none takes the settings above")
        for rule in rules.rules:
            lines.append("[[rules]]")
            lines.append(f"name = {_toml(rule.name)}")
            lines.append(f"match = {_toml(rule.match)}" if rule.match else f"prefix = {_toml(rule.prefix)}")
            lines += [f"{key} = {_toml(value)}" for key, value in rule.keys]
    tenants = getattr(args, "tenants", None)
    if tenants is not None:  # the [tenants] table as it reads back
        lines += ["", "[tenants]", f"identity = {_toml(tenants.identity)}", f"admin = {_toml(tenants.admin)}",
                  f"default = {_toml(tenants.default)}"]
        for who, tenant in tenants.tenants:
            lines += ["", "[[tenants.map]]", f"identity = {_toml(who)}", f"tenant = {_toml(tenant)}"]
    return "\n".join(lines) + "\n"
