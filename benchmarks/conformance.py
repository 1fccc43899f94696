"""ONNX's backend test suite on the edge runtime, and on ONNX Runtime for comparison.

``make conformance`` (or ``python -m benchmarks.conformance``) runs the test cases that
ship in the installed ``onnx`` wheel through
:mod:`neo_edge_runtime.compile.onnx_backend` and through ``onnxruntime.backend``:

- node cases: ``onnx.backend.test.case.node.collect_testcases``, one operator each (the
  ``_expanded`` ones run the operator's function body);
- model cases: the folders under ``onnx/backend/test/data/`` that ONNX's own runner reads
  (``simple``, ``pytorch-converted``, ``pytorch-operator``, and ``real``, whose models
  are the weight-free ``light`` versions shipped in the wheel, run as ONNX's runner runs
  them: inputs ``arange(n) / n``, the outputs stored beside the model).

Each case is checked as ONNX's runner checks it (``Runner.assert_similar_outputs``, the
case's own ``rtol``/``atol``) and classified:

- ``passed``;
- ``failed``: a wrong result, an error of this package, a crash or a time-out;
- ``unsupported``: TVM's ONNX importer or build refused the model
  (:class:`~neo_edge_runtime.compile.onnx_backend.UnsupportedModelError`);
- ``skipped``: the case needs something this machine lacks (a model download).

Cases run in two worker processes (one thread each), one case at a time with a time
limit; a worker that crashes or runs over is replaced and the run goes on. Writes
``benchmarks/results/conformance.json`` (every case) and ``conformance.md`` (a table per
operator); a run of a subset (``--ops``, ``--kinds``, ``--limit``) writes
``benchmarks/.cache/conformance-subset.*`` unless ``--output`` says otherwise.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.metadata
import json
import multiprocessing
import os
import platform
import queue
import re
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
CACHE = BENCH / ".cache"
MODEL_KINDS = ("simple", "pytorch-converted", "pytorch-operator", "real")
KINDS = ("node",) + MODEL_KINDS
BACKENDS = ("tvm", "ort")
OUTCOMES = ("passed", "failed", "unsupported", "skipped")
LIGHT_PREFIX = "onnx/backend/test/data/light/"


# ---------------------------------------------------------------------------------------
# The cases


def _quiet_collect(fn, *args):
    """Call a case collector without the numpy warnings its reference code raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import numpy as np
        with np.errstate(all="ignore"):
            return fn(*args)


def node_cases() -> list:
    """ONNX's node test cases that carry data, in collection order."""
    from onnx.backend.test.case import node
    return [c for c in _quiet_collect(node.collect_testcases, None) if c.data_sets]


_EXPANDED = re.compile(r"_expanded(_ver\d+)?$")


def node_op_types(cases: list) -> dict[str, str]:
    """Case name to the operator it tests: the graph's node for one-node cases; for an
    ``_expanded`` case (the operator's function body), its unexpanded twin's."""
    ops: dict[str, str] = {}
    for c in cases:
        nodes = c.model.graph.node
        if len(nodes) == 1:
            ops[c.name] = nodes[0].op_type
    for c in cases:
        if c.name in ops:
            continue
        twin = _EXPANDED.sub("", c.name)
        ops[c.name] = ops.get(twin) or (c.model.graph.node[-1].op_type
                                         if c.model.graph.node else "(empty)")
    return ops


def model_cases(kinds=MODEL_KINDS) -> list:
    """The model cases of ``kinds`` (folders under ``onnx/backend/test/data/``), sorted."""
    from onnx.backend.test.loader import load_model_tests
    out = []
    for kind in kinds:
        out.extend(sorted(load_model_tests(kind=kind), key=lambda c: c.name))
    return out


def _light_model_path(url: str) -> Path:
    import onnx
    return Path(onnx.__file__).resolve().parent.parent / url


def skip_reason(case) -> Optional[str]:
    """Why a model case cannot run on this machine, or None."""
    if case.model_dir is None and case.url and not case.url.startswith(LIGHT_PREFIX):
        return f"needs a download of {case.model_name} ({case.url})"
    if case.model_dir is None and case.url and not _light_model_path(case.url).exists():
        return f"the onnx wheel lacks {case.url}"
    return None


def _model_ops(case) -> list[str]:
    import onnx
    path = (Path(case.model_dir) / "model.onnx") if case.model_dir else _light_model_path(case.url)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # reported when the case runs
        return []
    return sorted({n.op_type for n in model.graph.node})


# ---------------------------------------------------------------------------------------
# One case, in a worker


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines[:3]) if lines and isinstance(exc, AssertionError) else \
        (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}"[:400]


def _model_data(case) -> tuple[Any, list]:
    """(model, [(inputs, expected outputs)]) of a model case, as ONNX's runner loads it."""
    import glob

    import onnx
    from onnx import numpy_helper
    from onnx.backend.test.runner import Runner

    if case.model_dir is None:  # a light model: inputs arange(n)/n, outputs stored
        path = _light_model_path(case.url)
        model = onnx.load(str(path))
        inits = {i.name for i in model.graph.initializer}
        inputs = [Runner.generate_dummy_data(x, seed=0, name=case.model_name, random=False)
                  for x in model.graph.input if x.name not in inits]
        prefix = str(path)[:-len(".onnx")]
        outputs = []
        for i in range(len(model.graph.output)):
            tensor = onnx.TensorProto()
            tensor.ParseFromString(Path(f"{prefix}_output_{i}.pb").read_bytes())
            outputs.append(numpy_helper.to_array(tensor))
        return model, [(inputs, outputs)]
    model = onnx.load(os.path.join(case.model_dir, "model.onnx"))
    runner = Runner.__new__(Runner)  # _load_proto reads no state
    data = []
    for folder in sorted(glob.glob(os.path.join(case.model_dir, "test_data_set*"))):
        inputs: list = []
        for i in range(len(glob.glob(os.path.join(folder, "input_*.pb")))):
            runner._load_proto(os.path.join(folder, f"input_{i}.pb"), inputs,
                               model.graph.input[i].type)
        outputs: list = []
        for i in range(len(glob.glob(os.path.join(folder, "output_*.pb")))):
            runner._load_proto(os.path.join(folder, f"output_{i}.pb"), outputs,
                               model.graph.output[i].type)
        data.append((inputs, outputs))
    return model, data


def run_case(case, backend: str) -> dict:
    """Run one case on ``backend`` (``tvm`` or ``ort``): ``{"outcome", "reason", "time_s"}``."""
    import unittest

    from onnx.backend.test.runner import Runner, _normalize_tensor

    start = time.perf_counter()

    def result(outcome: str, reason: str = "") -> dict:
        return {"outcome": outcome, "reason": reason,
                "time_s": round(time.perf_counter() - start, 3)}

    if case.kind != "node":
        why = skip_reason(case)
        if why:
            return result("skipped", why)
    rep = None
    try:
        if case.kind == "node":
            model, data = case.model, case.data_sets
        else:
            model, data = _model_data(case)
        if backend == "tvm":
            from neo_edge_runtime.compile import onnx_backend
            try:
                rep = onnx_backend.prepare(model, "CPU")
                for inputs, expected in data:
                    got = rep.run([_normalize_tensor(x) for x in inputs])
                    Runner.assert_similar_outputs([_normalize_tensor(x) for x in expected],
                                                  got, rtol=case.rtol, atol=case.atol)
            except onnx_backend.UnsupportedModelError as exc:
                return result("unsupported", _first_line(exc))
        else:
            import onnxruntime.backend as ort_backend
            rep = ort_backend.prepare(model, "CPU", intra_op_num_threads=1,
                                      inter_op_num_threads=1)
            for inputs, expected in data:
                got = rep.run([_normalize_tensor(x) for x in inputs])
                Runner.assert_similar_outputs([_normalize_tensor(x) for x in expected],
                                              list(got), rtol=case.rtol, atol=case.atol)
    except unittest.SkipTest as exc:
        return result("skipped", f"SkipTest: {exc}"[:400])
    except Exception as exc:
        return result("failed", _first_line(exc))
    finally:
        if rep is not None and hasattr(rep, "close"):
            rep.close()
    return result("passed")


def _worker(conn, log_path: str) -> None:
    """A worker process: runs the cases it is sent, one at a time, until sent None."""
    os.environ["TVM_NUM_THREADS"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    warnings.simplefilter("ignore")
    import numpy as np
    np.seterr(all="ignore")
    nodes = None
    models: dict = {}
    while True:
        task = conn.recv()
        if task is None:
            return
        kind, name, backend = task
        try:
            if kind == "node":
                if nodes is None:
                    nodes = {c.name: c for c in node_cases()}
                case = nodes[name]
            else:
                if kind not in models:
                    models[kind] = {c.name: c for c in model_cases([kind])}
                case = models[kind][name]
            print(f"--- {kind}/{name} on {backend}", flush=True)
            out = run_case(case, backend)
        except BaseException as exc:  # the worker reports and carries on
            traceback.print_exc()
            out = {"outcome": "failed", "reason": _first_line(exc), "time_s": 0.0}
        sys.stdout.flush()
        conn.send(out)


class _Worker:
    """A worker process and its pipe, replaced after a crash or a time-out."""

    def __init__(self, ctx, log_path: Path):
        self.ctx, self.log_path = ctx, log_path
        self.proc = None
        self.conn = None
        self.fresh = False

    def start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, str(self.log_path)),
                                     daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        self.fresh = True

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.join(5)
        self.proc = None

    def run(self, task, timeout: float, startup: float) -> dict:
        if self.proc is None:
            self.start()
        start = time.perf_counter()
        self.conn.send(task)
        # A fresh worker first imports TVM and collects the cases.
        allowed = timeout + (startup if self.fresh else 0.0)
        self.fresh = False
        if self.conn.poll(allowed):
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                pass
        elapsed = round(time.perf_counter() - start, 3)
        alive = self.proc.is_alive()
        code = self.proc.exitcode
        self.kill()
        if alive:
            return {"outcome": "failed", "reason": f"timed out after {timeout:.0f} s",
                    "time_s": elapsed}
        return {"outcome": "failed", "reason": f"the process crashed (exit code {code})",
                "time_s": elapsed}

    def stop(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(10)
        self.kill()


# ---------------------------------------------------------------------------------------
# The run


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("onnx", "onnxruntime", "apache-tvm", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def select(ops: Optional[set], kinds: tuple, limit: Optional[int]) -> list[dict]:
    """The cases to run: ``{"kind", "name", "op_type", "ops", "rtol", "atol"}``."""
    selected: list[dict] = []
    if "node" in kinds:
        cases = node_cases()
        types = node_op_types(cases)
        for c in cases:
            if ops is None or types[c.name] in ops:
                selected.append({"kind": "node", "name": c.name, "op_type": types[c.name],
                                 "rtol": c.rtol, "atol": c.atol})
    for c in model_cases([k for k in kinds if k != "node"]):
        model_ops = _model_ops(c) if skip_reason(c) is None else []
        if ops is not None and not (set(model_ops) & ops):
            continue
        selected.append({"kind": c.kind, "name": c.name, "op_type": f"({c.kind})",
                         "ops": model_ops, "rtol": c.rtol, "atol": c.atol})
    return selected[:limit] if limit is not None else selected


def run(cases: list[dict], *, workers: int, timeout: float, log_dir: Path,
        progress=print) -> list[dict]:
    """Run every case on both backends with ``workers`` processes; returns the cases with
    ``tvm`` and ``ort`` results filled in."""
    ctx = multiprocessing.get_context("spawn")
    tasks: queue.Queue = queue.Queue()
    for i, c in enumerate(cases):
        for backend in BACKENDS:
            tasks.put((i, backend))
    lock = threading.Lock()
    done = [0]
    total = tasks.qsize()
    t0 = time.perf_counter()

    def drive(k: int) -> None:
        w = _Worker(ctx, log_dir / f"conformance-worker{k}.log")
        try:
            while True:
                try:
                    i, backend = tasks.get_nowait()
                except queue.Empty:
                    return
                c = cases[i]
                out = w.run((c["kind"], c["name"], backend), timeout, startup=60.0)
                with lock:
                    c[backend] = out
                    done[0] += 1
                    if out["outcome"] not in ("passed",) or done[0] % 100 == 0:
                        progress(f"[{done[0]}/{total} {time.perf_counter() - t0:.0f}s] "
                                 f"{c['kind']}/{c['name']} {backend}: {out['outcome']} "
                                 f"{out['reason'][:120]}")
        finally:
            w.stop()

    threads = [threading.Thread(target=drive, args=(k,), daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return cases


# ---------------------------------------------------------------------------------------
# Reports


def _counts(rows: list[dict]) -> dict:
    c = collections.Counter(r["outcome"] for r in rows)
    return {"cases": len(rows), **{o: c.get(o, 0) for o in OUTCOMES},
            "ort_passed": sum(r["ort"]["outcome"] == "passed" for r in rows)}


def summary(cases: list[dict]) -> dict:
    """Totals over all cases, node cases, model cases, and per operator / collection."""
    node = [c for c in cases if c["kind"] == "node"]
    model = [c for c in cases if c["kind"] != "node"]
    per_op = collections.defaultdict(list)
    for c in node:
        per_op[c["op_type"]].append(c)
    per_kind = collections.defaultdict(list)
    for c in model:
        per_kind[c["kind"]].append(c)
    return {"total": _counts(cases), "node": _counts(node), "model": _counts(model),
            "per_op": {op: _counts(rows) for op, rows in sorted(per_op.items())},
            "per_kind": {k: _counts(rows) for k, rows in per_kind.items()}}


def _row(label: str, n: dict) -> str:
    return (f"| {label} | {n['cases']} | {n['passed']} | {n['failed']} | {n['unsupported']} "
            f"| {n['skipped']} | {n['ort_passed']} |")


_HEADER = ("| {} | cases | passed | failed | not supported by TVM | skipped | ORT passed |\n"
           "|---|---:|---:|---:|---:|---:|---:|")


def dumps(doc: dict) -> str:
    """``doc`` as JSON, one case a line."""
    head = {k: v for k, v in doc.items() if k != "cases"}
    text = json.dumps(head, indent=1)[:-2]
    cases = ",\n".join("  " + json.dumps(c) for c in doc["cases"])
    return f'{text},\n "cases": [\n{cases}\n ]\n}}\n'


def _reason_kind(reason: str) -> str:
    """A reason with what varies between cases (names, numbers, values) left out."""
    text = re.sub(r"\S+\.onnx: ", "", reason)
    text = re.sub(r"\(node[s]? [^)]*\)", "(node)", text)
    text = re.sub(r"Mismatched elements.*", "values differ", text)
    text = re.sub(r"'[^'\s]*'|\d+(\.\d+)?(e-?\d+)?", "_", text)
    text = text.replace("|", "\\|")
    return text[:160]


def markdown(doc: dict) -> str:
    s = doc["summary"]
    t, nd, md = s["total"], s["node"], s["model"]
    lines = [
        "# ONNX backend conformance: edge runtime (TVM) and ONNX Runtime",
        "",
        f"Run on {doc['date']} with `{doc['command']}` ({doc['machine']}; "
        + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + f"), "
        f"{doc['wall_s'] / 60:.0f} minutes, {doc['workers']} worker processes of one thread, "
        f"{doc['timeout_s']:.0f} s per case and engine.",
        "",
        f"**Total: {t['passed']} of {t['cases']} cases passed on the edge runtime** "
        f"({t['failed']} failed, {t['unsupported']} not supported by TVM, {t['skipped']} "
        f"skipped); ONNX Runtime passed {t['ort_passed']} of the same {t['cases']}.",
        f"Node cases: {nd['passed']} / {nd['cases']} (ORT {nd['ort_passed']}); model cases: "
        f"{md['passed']} / {md['cases']} (ORT {md['ort_passed']}).",
        "",
        "Outcomes: *passed*: outputs within the case's rtol/atol (ONNX's "
        "`Runner.assert_similar_outputs`); *failed*: a wrong result, an error of neo-edge, "
        "a crash or a time-out; *not supported by TVM*: TVM's ONNX importer or its build "
        "refused the model; *skipped*: needs what this machine lacks. The reason of every "
        "case is in [conformance.json](conformance.json).",
        "",
        "## Model cases",
        "",
        _HEADER.format("collection"),
    ]
    for kind, n in s["per_kind"].items():
        lines.append(_row(kind, n))
    lines.append(_row("**total**", md))
    lines += ["", "`real` runs the weight-free *light* models shipped in the onnx wheel (every "
              "weight a constant), with inputs `arange(n) / n` and the outputs stored beside "
              "them, as ONNX's runner does; the full models need downloads.", ""]
    lines += ["## Node cases, per operator", "", _HEADER.format("operator")]
    for op, n in s["per_op"].items():
        lines.append(_row(op, n))
    lines.append(_row("**total**", nd))
    for outcome, title in (("failed", "Failed"), ("unsupported", "Not supported by TVM")):
        reasons = collections.Counter(_reason_kind(c["reason"]) for c in doc["cases"]
                                      if c["outcome"] == outcome)
        lines += ["", f"## {title}: the most common reasons", "", "| cases | reason |",
                  "|---:|---|"]
        for reason, n in reasons.most_common(15):
            lines.append(f"| {n} | {reason} |")
    skipped = [c for c in doc["cases"] if c["outcome"] == "skipped"]
    lines += ["", "## Skipped", ""]
    if skipped:
        for c in skipped:
            lines.append(f"- `{c['kind']}/{c['name']}`: {c['reason']}")
    else:
        lines.append("Nothing.")
    ort_skipped = [c for c in doc["cases"] if c["ort"]["outcome"] == "skipped"]
    if ort_skipped:
        lines += ["", f"ONNX Runtime skipped {len(ort_skipped)} cases (counted as not passed), "
                  f"e.g. `{ort_skipped[0]['name']}`: {ort_skipped[0]['ort']['reason']}"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.conformance",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", help="comma-separated operators: their node cases (and the "
                    "model cases using them); default all")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated collections, of {','.join(KINDS)}; default all")
    ap.add_argument("--limit", type=int, help="run the first N cases selected")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds per case and engine (default 120)")
    ap.add_argument("--report", metavar="JSON",
                    help="only rewrite the markdown report of an earlier run's JSON")
    ap.add_argument("--output", help="results path without suffix; default "
                    "benchmarks/results/conformance, benchmarks/.cache/conformance-subset "
                    "for a subset")
    args = ap.parse_args(argv)

    if args.report:
        doc = json.loads(Path(args.report).read_text())
        Path(args.report).with_suffix(".md").write_text(markdown(doc))
        print(f"wrote {Path(args.report).with_suffix('.md')}")
        return 0
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        ap.error(f"--kinds must be of {', '.join(KINDS)}; got {unknown[0]!r}")
    ops = {o.strip() for o in args.ops.split(",") if o.strip()} if args.ops else None
    subset = ops is not None or args.limit is not None or set(kinds) != set(KINDS)
    output = Path(args.output) if args.output else (
        CACHE / "conformance-subset" if subset else RESULTS / "conformance")
    output.parent.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)

    cases = select(ops, kinds, args.limit)
    print(f"{len(cases)} cases ({sum(c['kind'] == 'node' for c in cases)} node), "
          f"{args.workers} workers, logs in {CACHE}/conformance-worker*.log", flush=True)
    for k in range(args.workers):
        (CACHE / f"conformance-worker{k}.log").write_text("")
    t0 = time.perf_counter()
    run(cases, workers=args.workers, timeout=args.timeout, log_dir=CACHE,
        progress=lambda msg: print(msg, flush=True))
    wall = time.perf_counter() - t0
    doc = {
        "command": "python -m benchmarks.conformance"
                   + ("" if argv is None and len(sys.argv) <= 1 else " " + " ".join(
                       argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "versions": _versions(),
        "workers": args.workers,
        "timeout_s": args.timeout,
        "wall_s": round(wall, 1),
        "cases": [{"name": c["name"], "kind": c["kind"], "op_type": c["op_type"],
                   **({"ops": c["ops"]} if "ops" in c else {}),
                   "rtol": c["rtol"], "atol": c["atol"],
                   "outcome": c["tvm"]["outcome"], "reason": c["tvm"]["reason"],
                   "time_s": c["tvm"]["time_s"], "ort": c["ort"]}
                  for c in cases],
    }
    doc["summary"] = summary(doc["cases"])
    output.with_suffix(".json").write_text(dumps(doc))
    output.with_suffix(".md").write_text(markdown(doc))
    t = doc["summary"]["total"]
    print(f"{t['passed']}/{t['cases']} passed on the edge runtime, ORT {t['ort_passed']}; "
          f"wrote {output.with_suffix('.json')} and .md in {wall:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
