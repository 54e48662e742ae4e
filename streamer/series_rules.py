"""Rules per series: judging a batch whose rows fall under several of the config file's [[rules]] (defined in
rule_set.py: Rule, RuleSet, re-exported here).

A series matching no rule is judged with the server's defaults, and its outliers name no rule (""). What lives
here: the settings a reload swaps (Settings, Live), the per-state cache of each series' rule, and judge(), which
runs the kernel (rules.stream_update) once per rule present in a batch. No grpc, no protobuf.
"""
from __future__ import annotations

import dataclasses
import threading

import numpy as np

from streamer import rules
from streamer.defaults import MODE_EXPONENTIAL
from streamer.rule_set import NO_RULES, NOT_PER_SERIES, RULE_KEYS, Rule, RuleSet  # noqa: F401 (re-exported)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a reload changes for detection: the server's defaults (a detector.Defaults), the rules, the OTLP
    options (a wire.Options), numbered so an open stream sees that they changed."""

    version: int
    defaults: object
    rules: RuleSet = NO_RULES
    otlp_options: object = None


class Live:
    """The server's current Settings: `current` is replaced whole by a reload (one attribute store, so a reader
    on any thread sees the old or the new settings, never a mix); `lock` serializes reloads."""

    def __init__(self, settings: Settings):
        self.current = settings
        self.lock = threading.Lock()

    def replace(self, **fields) -> Settings:
        with self.lock:
            now = self.current
            self.current = dataclasses.replace(now, version=now.version + 1, **fields)
            return self.current


def rule_of_rows(state, ruleset: RuleSet, version: int, ids: np.ndarray, name_hash: np.ndarray) -> np.ndarray:
    """The rule index of each row (series slot ids[i], whose name hashes to name_hash[i]), from a cache per state
    and slot: a slot's rule is found when its series is first seen (or its slot holds another name, or the rules
    changed), by the table's name."""
    cache = state.__dict__.get("_rule_cache")
    n = state.table.slots
    if cache is None or cache[0] != version:
        cache = (version, np.full(max(n, 16), -1, dtype=np.int32), np.zeros(max(n, 16), dtype=np.int64))
    elif len(cache[1]) < n:
        grown = (version, np.full(2 * n, -1, dtype=np.int32), np.zeros(2 * n, dtype=np.int64))
        grown[1][:len(cache[1])] = cache[1]
        grown[2][:len(cache[2])] = cache[2]
        cache = grown
    state._rule_cache = cache
    _, of, hashes = cache
    stale = np.flatnonzero((of[ids] < 0) | (hashes[ids] != name_hash))
    if len(stale):
        for i in stale.tolist():
            s = int(ids[i])
            if of[s] < 0 or hashes[s] != name_hash[i]:
                of[s] = ruleset.index(state.table.name(s).decode("utf-8", "replace"))
                hashes[s] = name_hash[i]
    return of[ids]


def params_of(ruled: list, ids: np.ndarray, rule_of: np.ndarray):
    """A function of a slot among `ids` giving its series' Params (ruled[rule_of[i]] at a row i of the slot): what
    the page's taps judge a ruled series' band by (streamer/web/tap.py)."""
    return lambda slot: ruled[int(rule_of[np.flatnonzero(ids == slot)[0]])]


def _update(p, ids, values, times, now_ns, state, idx, mean, std, z, tail, ev, ev_stats, ev_n) -> int:
    """rules.stream_update with the options `p` (a detector.Params) on `state` (which has their arrays)."""
    r = p.rules()
    episodes = ((times, now_ns, state.ep_run, state.ep_start, state.ep_count, state.ep_peak_z, state.ep_peak_value,
                 ev, ev_stats, ev_n) if r.resolve_after else rules.NO_EPISODES)
    return rules.stream_update(ids, values, state.count, state.mean, state.spread, p.mode == MODE_EXPONENTIAL, p.alpha,
                               p.threshold, p.warmup, p.exclude_outliers, r.exclude_limit, r.cooldown, state.streak,
                               state.hold, r.likelihood, r.window, r.tail_threshold, r.learning, state.lcount,
                               state.lmean, state.lvar, state.ring, idx, mean, std, z,
                               tail if r.likelihood else tail[:0], r.suppress_array, r.resolve_after, *episodes)


def judge(state, params: list, rule_of: np.ndarray, ids: np.ndarray, values: np.ndarray, times: np.ndarray,
          now_ns: int, idx, mean, std, z, tail, ev, ev_stats, ev_n) -> tuple[int, np.ndarray, np.ndarray]:
    """Judge a batch whose row i falls under params[rule_of[i]] (detector.Params; the last: no rule), each group
    by its options in one kernel call; a series' values stay in one group, in batch order, so each series is
    judged value after value as by one call. Writes the reported outliers to idx (ascending rows), mean, std, z,
    tail (zeros where a rule has no likelihood score) and the episode changes to ev, ev_stats, ev_n (rows in
    batch order), as rules.stream_update does. Returns (k, the rule of each outlier, the rule of each change)."""
    n = len(values)
    counts = np.bincount(rule_of, minlength=len(params))
    groups = np.flatnonzero(counts)
    tail[:n] = 0.0
    if len(groups) == 1:  # the batch is under one rule: one call, as without rules
        g = int(groups[0])
        ev_n[0] = 0
        k = _update(params[g], ids, values, times, now_ns, state, idx, mean, std, z, tail, ev, ev_stats, ev_n)
        return k, np.full(k, g, dtype=np.int64), np.full(int(ev_n[0]), g, dtype=np.int64)
    # The rows grouped by rule (stable: batch order within a group), each group a slice of the sorted columns;
    # its outputs go to the same slice of scratch arrays, then are put back in batch order.
    order = np.argsort(rule_of, kind="stable")
    s_ids, s_values, s_times = ids[order], values[order], times[order]
    o_idx, o_mean, o_std, o_z, o_tail = (np.empty(n, dtype=np.int32), np.empty(n), np.empty(n), np.empty(n),
                                         np.zeros(n))
    o_ev, o_stats, o_n = np.empty((n, 4), dtype=np.int64), np.empty((n, 5)), np.zeros(1, dtype=np.int64)
    found, changes, a = [], [], 0
    for g in groups.tolist():
        b = a + int(counts[g])
        o_n[0] = 0  # a rule without episodes leaves the count alone: not the previous group's
        k = _update(params[g], s_ids[a:b], s_values[a:b], s_times[a:b], now_ns, state, o_idx[a:], o_mean[a:],
                    o_std[a:], o_z[a:], o_tail[a:], o_ev[a:], o_stats[a:], o_n)
        found.append((a, k, g))
        e = int(o_n[0])
        if e:
            changes.append((a, e, g))
        a = b
    at = np.concatenate([order[a + o_idx[a:a + k]] for a, k, _ in found])
    where = np.concatenate([np.arange(a, a + k) for a, k, _ in found])  # each outlier's slot in the o_* arrays
    rule_out = np.concatenate([np.full(k, g) for _, k, g in found])
    first = np.argsort(at, kind="stable")
    k = len(at)
    where = where[first]
    idx[:k], mean[:k], std[:k], z[:k], tail[:k] = at[first], o_mean[where], o_std[where], o_z[where], o_tail[where]
    rule_out = rule_out[first]
    if not changes:
        ev_n[0] = 0
        return k, rule_out, np.zeros(0, dtype=np.int64)
    rows = np.concatenate([np.arange(a, a + e) for a, e, _ in changes])
    moved = o_ev[rows]
    moved[:, 0] = np.concatenate([order[a + o_ev[a:a + e, 0]] for a, e, _ in changes])
    rule_ev = np.concatenate([np.full(e, g) for _, e, g in changes])
    first = np.argsort(moved[:, 0], kind="stable")
    e = len(first)
    ev[:e], ev_stats[:e], ev_n[0] = moved[first], o_stats[rows[first]], e
    return k, rule_out, rule_ev[first]


__all__ = ["Rule", "RuleSet", "NO_RULES", "Settings", "Live", "RULE_KEYS", "judge", "rule_of_rows"]
