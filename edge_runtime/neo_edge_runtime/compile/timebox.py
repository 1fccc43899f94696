"""Tuning within a time budget: ``neo-edge compile --tune-minutes N``.

MetaSchedule counts trials, not seconds, and what a trial costs varies a hundredfold
between a small model on a fast machine and a large one on a slow one. So the budget is
spent in rounds: each round compiles with a larger trial total against the same tuning
database (earlier trials are kept, see :func:`.compiler.compile_model`), the next
round is sized from the seconds per trial measured so far to end by the deadline, and
no round starts that could not add :data:`MIN_ROUND_TRIALS`. Every round writes the
artifact, so stopping at any point leaves the best artifact so far.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import CompileError

#: The first round's trials: it also measures the template schedules and the Winograd
#: choices, whose cost does not grow with trials.
FIRST_ROUND_TRIALS = 32
#: A round adding fewer trials than this is not worth its compile.
MIN_ROUND_TRIALS = 8


def next_round(done: int, elapsed_s: float, spent_s: float, trials_spent: int,
               budget_s: float, max_trials: Optional[int] = None) -> int:
    """Trials the next round adds, 0 to stop.

    ``done``: trials in the database so far; ``elapsed_s``: seconds since the budget
    started; ``spent_s`` and ``trials_spent``: what the tuning rounds so far took and
    added (0 and 0 before the first); ``max_trials``: the most trials in all, if any.
    The seconds per trial measured so far include each round's compile, so the estimate
    errs long and the budget is kept.
    """
    left = budget_s - elapsed_s
    room = float("inf") if max_trials is None else max_trials - done
    if left <= 0 or room < 1:
        return 0
    if trials_spent <= 0:
        step = FIRST_ROUND_TRIALS
    else:
        step = int(left / (spent_s / trials_spent))
        if step < MIN_ROUND_TRIALS:
            return 0
    return int(min(step, room))


def tune_for(model, target, output_dir, *, minutes: float, max_trials: Optional[int] = None,
             tuning_db=None, log: Callable[[str], None] = lambda msg: None,
             clock: Callable[[], float] = time.monotonic,
             compile_fn: Optional[Callable] = None, **options) -> Path:
    """Compile ``model`` tuned for at most about ``minutes`` (and at most ``max_trials``
    trials in all, if given), into ``output_dir``; ``options`` go to
    :func:`.compiler.compile_model`. Without ``tuning_db`` the database lives in a
    temporary folder for the duration.

    A round already running when the budget ends finishes: the overrun is at most one
    round, which the sizing keeps short of the deadline as measured.
    """
    if minutes <= 0:
        raise CompileError(f"tune minutes must be more than 0; got {minutes}")
    if max_trials is not None and max_trials < 1:
        raise CompileError(f"with a time budget, tune_trials caps the trials and must be 1 or "
                           f"more; got {max_trials}")
    if compile_fn is None:
        from .compiler import compile_model as compile_fn
    from .compiler import read_tuning_marker

    budget, start = minutes * 60.0, clock()
    with tempfile.TemporaryDirectory(prefix="neo-edge-tuning-") as scratch:
        db = Path(tuning_db) if tuning_db is not None else Path(scratch)
        out, spent, trials_spent, done = None, 0.0, 0, None
        while True:
            if done is None:  # what an earlier run left in the database counts
                done = max(read_tuning_marker(db)["trials"].values(), default=0) \
                    if db.exists() else 0
            step = next_round(done, clock() - start, spent, trials_spent, budget, max_trials)
            if step == 0:
                break
            t = clock()
            out = compile_fn(model, target, output_dir, tune_trials=done + step,
                             tuning_db=db, log=log, **options)
            spent, trials_spent = spent + clock() - t, trials_spent + step
            done = _trials_in(out, done + step)
            log(f"tuned to {done} trials in {(clock() - start) / 60:.1f} of {minutes:g} min")
        if out is None:  # no time for a round: the database as it is
            out = compile_fn(model, target, output_dir, tune_trials=0, tuning_db=db, log=log,
                             **options)
    return Path(out)


def _trials_in(artifact_dir, default: int) -> int:
    """The model's trials in all, as the artifact's manifest records them."""
    import json

    try:
        manifest = json.loads((Path(artifact_dir) / "manifest.json").read_text())
        return int(manifest["compile_options"]["tune_trials"])
    except (OSError, ValueError, KeyError, TypeError):
        return default
