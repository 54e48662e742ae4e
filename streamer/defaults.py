"""The detection options as plain data: the enum codes of DetectOptions and their names, DetectOptions as sent
(Options) and the server's defaults for what a request leaves unset (Defaults).

No numpy, no numba: the CLI, the config file and the server's Config read these without loading the pipeline
(tests/test_cli_startup.py checks it). The wire package, series_state.py and detector.py re-export them; resolving
Options against Defaults lives in detector.py.
"""
from __future__ import annotations

import dataclasses

# DetectOptions' enums (protos/outliers.proto: Mode, Score, Direction; 0 = the server's default)
MODE_CUMULATIVE = 1
MODE_EXPONENTIAL = 2
MODE_NAMES = {MODE_CUMULATIVE: "MODE_CUMULATIVE", MODE_EXPONENTIAL: "MODE_EXPONENTIAL"}
MAX_LIKELIHOOD_SHORT = 1024  # raw scores a series' likelihood ring holds at most (8 bytes each)
SCORE_ZSCORE, SCORE_LIKELIHOOD = 1, 2
SCORE_NAMES = {SCORE_ZSCORE: "SCORE_ZSCORE", SCORE_LIKELIHOOD: "SCORE_LIKELIHOOD"}
DIRECTION_BOTH, DIRECTION_UP, DIRECTION_DOWN = 1, 2, 3
DIRECTION_NAMES = {DIRECTION_BOTH: "DIRECTION_BOTH", DIRECTION_UP: "DIRECTION_UP", DIRECTION_DOWN: "DIRECTION_DOWN"}
# the names the CLI's flags, the config file and the page take for the enum options
MODES = {"cumulative": MODE_CUMULATIVE, "exponential": MODE_EXPONENTIAL}
SCORES = {"zscore": SCORE_ZSCORE, "likelihood": SCORE_LIKELIHOOD}
DIRECTIONS = {"both": DIRECTION_BOTH, "up": DIRECTION_UP, "down": DIRECTION_DOWN}


@dataclasses.dataclass(frozen=True)
class Options:
    """DetectOptions as sent: zero fields 1-5 and None fields 6-12 mean "the server's default" (resolved in
    detector.py)."""

    threshold: float = 0.0
    warmup: int = 0
    mode: int = 0
    alpha: float = 0.0
    exclude_outliers: bool = False
    exclude_limit: int | None = None
    cooldown: int | None = None
    score: int | None = None
    likelihood_short: int | None = None
    likelihood_window: int | None = None
    likelihood_threshold: float | None = None
    likelihood_learning: int | None = None
    min_deviation: float | None = None
    min_relative_deviation: float | None = None
    direction: int | None = None
    resolve_after: int | None = None
    series_ttl: float | None = None  # field 13, series_ttl_seconds


@dataclasses.dataclass(frozen=True)
class Defaults:
    """Server-wide defaults, used for every zero field (1-5) or unset field (6-12) of DetectOptions, and limits."""

    threshold: float = 2.0
    warmup: int = 10
    mode: int = MODE_CUMULATIVE
    alpha: float = 0.05
    exclude_limit: int | None = None  # None: the stream's warmup (at least 2, as the warmup acts)
    cooldown: int = 0
    score: int = SCORE_ZSCORE
    likelihood_short: int = 10
    likelihood_window: int = 8640
    likelihood_threshold: float = 1e-5
    likelihood_learning: int = 300
    min_deviation: float = 0.0
    min_relative_deviation: float = 0.0
    direction: int = 1  # DIRECTION_BOTH
    resolve_after: int = 10
    episodes: bool = False  # whether streams keep episodes at all (--episodes; on when an alert sink is set)
    max_series: int = 100_000
    series_ttl: float = 0.0  # seconds a series may be idle before it is dropped (0: never); --series-ttl
    max_response_bytes: int = 64 * 1024 * 1024  # what grpc can send; the server sets it from --max-message-mb
