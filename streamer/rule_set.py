"""The config file's [[rules]] as plain data: option sets chosen by series key (a glob or a prefix, the first match
winning), and the keys a rule may set.

A rule's keys are `serve` flags' (threshold, cooldown, score, ...): for the series it matches they replace the
server's defaults, so a client's explicit DetectOptions field still wins. No numpy, no numba: the CLI and
`streamer config check` build these without loading the pipeline; judging a batch by them is series_rules.py.
"""
from __future__ import annotations

import dataclasses
import fnmatch

# The keys a rule may set (`serve` flags that are per-series DetectOptions defaults), by Defaults field.
RULE_KEYS = ("threshold", "warmup", "alpha", "exclude_limit", "cooldown", "score", "likelihood_window",
             "likelihood_threshold", "likelihood_learning", "min_deviation", "min_relative_deviation", "direction",
             "resolve_after")
# Keys a rule may not set, and why (the refusal says it).
NOT_PER_SERIES = {
    "mode": "a stream's or session's state has one mode (its spread is an M2 or a variance): set it with "
            "`mode` at the top of the file or the client's options",
    "likelihood_short": "the likelihood ring's length is one per state: set it with `likelihood_short` at the top "
                        "of the file",
    "series_ttl": "the series TTL is one per stream or session: set it with `series_ttl` at the top of the file",
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One [[rules]] table: its name, its pattern (a glob `match` or a `prefix`) and the Defaults fields it sets."""

    name: str
    match: str = ""
    prefix: str = ""
    values: tuple[tuple[str, object], ...] = ()  # (Defaults field, value), in the file's order
    keys: tuple[tuple[str, object], ...] = ()    # (key, the file's value): what `config check` prints

    def matches(self, key: str) -> bool:
        return fnmatch.fnmatchcase(key, self.match) if self.match else key.startswith(self.prefix)

    def defaults(self, base):
        """`base` (a detector.Defaults) with this rule's values."""
        return dataclasses.replace(base, **dict(self.values))


@dataclasses.dataclass(frozen=True)
class RuleSet:
    """The ordered rules; index(key) is the first that matches, or len(rules) (none: the server's defaults)."""

    rules: tuple[Rule, ...] = ()

    def __len__(self) -> int:
        return len(self.rules)

    def index(self, key: str) -> int:
        for i, rule in enumerate(self.rules):
            if rule.matches(key):
                return i
        return len(self.rules)

    @property
    def names(self) -> tuple[str, ...]:
        """Each rule's name, then "" (no rule matched): what outliers and episodes carry, by index()."""
        return tuple(r.name for r in self.rules) + ("",)


NO_RULES = RuleSet()
