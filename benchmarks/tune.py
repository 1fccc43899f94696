"""Grow the shipped tuning databases of the zoo, within a wall-clock budget.

``python -m benchmarks.tune --minutes 60`` tunes the CNNs (or ``--models``) on this
machine in rounds: each round raises every model's total MetaSchedule trials by
``--step`` (the first round also gives every kernel a few trials), so all models
progress together and stopping early leaves each one better than before. The records
go to ``benchmarks/tuning/<target>/<model>/``, which ``make bench`` applies without
tuning again. Run it niced on a shared machine: ``nice -n 19 python -m benchmarks.tune``.

Tuning measures on this machine: it only makes sense for ``--target host`` or the Neo
target of the machine it runs on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from .run import BUILD, CNNS, MODELS, build_model, tuning_dir


def trials_done(db: Path) -> int:
    from neo_edge_runtime.compile.compiler import read_tuning_marker

    return max(read_tuning_marker(db)["trials"].values(), default=0)


def prune(db: Path, keep: int = 1) -> tuple[int, int]:
    """Keep the ``keep`` fastest records of each kernel in ``db``'s tuning records.

    Compiling applies the fastest record of each kernel only, so the shipped databases
    keep what reproduces the artifacts (and seeds later tuning) without megabytes of
    slower candidates. Returns (records before, records after).
    """
    path = db / "database_tuning_record.json"
    if not path.exists():
        return 0, 0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    by_workload: dict[int, list] = {}
    for order, line in enumerate(lines):
        workload, record = json.loads(line)
        secs = [s for s in (record[1] or []) if s is not None and s < 1e9]
        if secs:
            by_workload.setdefault(workload, []).append((sum(secs) / len(secs), order, line))
    kept = sorted(r for rs in by_workload.values() for r in sorted(rs)[:keep])
    kept.sort(key=lambda r: r[1])  # the database's own order
    path.write_text("".join(r[2] + "\n" for r in kept))
    return len(lines), len(kept)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tune", description=__doc__.splitlines()[0])
    p.add_argument("--target", default="host")
    p.add_argument("--models", default=",".join(CNNS),
                   help=f"comma-separated subset of {', '.join(MODELS)} (default: the CNNs)")
    p.add_argument("--minutes", type=float, default=60.0,
                   help="no new round starts after this many minutes (default: 60)")
    p.add_argument("--step", type=int, default=300,
                   help="trials added to each model per round (default: 300)")
    p.add_argument("--keep", type=int, default=1,
                   help="records kept per kernel once done (default: 1, the fastest; 0 keeps "
                        "everything)")
    p.add_argument("--prune-only", action="store_true",
                   help="only prune the databases to --keep records per kernel")
    p.add_argument("--max-trials", type=int, default=5000,
                   help="stop growing a model's database at this many trials (default: 5000)")
    args = p.parse_args(argv)

    from neo_edge_runtime import compile_model

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    deadline = time.time() + (0 if args.prune_only else args.minutes * 60)
    while time.time() < deadline:
        progressed = False
        for name in models:
            if time.time() >= deadline:
                break
            db = tuning_dir(args.target, name)
            before = trials_done(db)
            if before >= args.max_trials:
                continue
            goal = min(args.max_trials, before + args.step)
            src = build_model(name, BUILD / "models")
            start = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                compile_model(src["source"], args.target, Path(tmp) / name, name=name,
                              tune_trials=goal, tuning_db=db,
                              log=lambda m: print(f"{name}: {m}", flush=True))
            print(f"{name}: {before} -> {goal} trials in {time.time() - start:.0f}s "
                  f"({(deadline - time.time()) / 60:.0f} min left)", flush=True)
            progressed = True
        if not progressed:
            break
    if args.keep:
        for name in models:
            before, after = prune(tuning_dir(args.target, name), args.keep)
            print(f"{name}: kept {after} of {before} tuning records", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
