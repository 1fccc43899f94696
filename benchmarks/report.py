"""The results as a markdown table and a chart (``benchmarks/run.py`` writes both)."""

from __future__ import annotations

import math
from pathlib import Path

LABELS = {"mobilenet_v2": "MobileNetV2", "resnet18": "ResNet-18", "squeezenet": "SqueezeNet 1.1",
          "mlp": "MLP", "xgboost": "XGBoost",
          # the corpus (torch.onnx dynamo exporter, skl2onnx)
          "resnet": "ResNet-18 (torch)", "mobilenet_v3_small": "MobileNetV3-S (torch)",
          "efficientnet_b0": "EfficientNet-B0 (torch)", "yolo": "YOLO-style (torch)",
          "unet": "U-Net (torch)", "kws_gru": "KWS GRU (torch)", "kws_lstm": "KWS LSTM (torch)",
          "sensor_cnn": "Sensor CNN (torch)", "vit": "ViT-Ti/16 (torch)",
          "scaler_logistic_regression": "Scaler+LogReg (skl2onnx)",
          "random_forest": "RandomForest (skl2onnx)",
          "scaler_mlp_regressor": "Scaler+MLP (skl2onnx)"}


def trials_cell(entry: dict, machine: dict) -> str:
    """The tuning column: the trials, and which CPU measured them where that is not the
    one measured on now (its schedules still apply: see ``compiler._tuning_key``)."""
    trials = entry.get("tuning_trials")
    if not trials:
        return "untuned"
    others = [c for c in entry.get("tuned_on", []) if c != machine.get("llvm_cpu")]
    return f"{trials} (tuned on {', '.join(others)})" if others else str(trials)


def geomean_ratios(results: dict) -> dict:
    """{threads: geometric mean of TVM/ORT over the models measured with both}."""
    by_threads: dict = {}
    for entry in results["models"].values():
        for run in entry.get("runs", []):
            if run.get("ratio_tvm_over_ort"):
                by_threads.setdefault(str(run["threads"]), []).append(run["ratio_tvm_over_ort"])
    return {t: {"geomean": math.exp(sum(map(math.log, rs)) / len(rs)), "models": len(rs)}
            for t, rs in by_threads.items()}


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _verdict(name: str, entry: dict, run: dict) -> str:
    ratio = run.get("ratio_tvm_over_ort")
    if ratio is None:
        return ""
    if ratio <= 1.0:
        return "at or below ORT"
    if entry["kind"] == "cnn":
        return f"**behind ORT ({ratio:.2f}x)**"
    return f"behind ORT ({ratio:.2f}x)"


def markdown(results: dict) -> str:
    m, t = results["machine"], results["target"]
    lines = [
        f"Target `{t['name']}` ({t['arch']}, {t['device']}) on {m['cpu']}, "
        f"{m['physical_cores']} physical cores" + (f", {m['gpu']}" if m.get("gpu") else "")
        + f"; TVM {results['versions'].get('apache-tvm', '?')}, ONNX Runtime "
        f"{results['versions'].get('onnxruntime', '-')}. Batch 1, float32, CNNs at "
        f"{results['settings']['image']}x{results['settings']['image']}.",
        "",
        "| Model | Threads | TVM median (ms) | TVM p90 (ms) | ORT median (ms) | ORT p90 (ms) "
        "| TVM/ORT | Max abs diff | Cold start TVM / ORT (ms) | Peak RSS TVM / ORT (MB) "
        "| MetaSchedule trials | Verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, entry in results["models"].items():
        for run in entry.get("runs", []):
            tvm, ort = run["tvm"], run.get("ort")
            diff = run.get("max_abs_diff_vs_ort")
            cells = [
                LABELS.get(name, name), str(run["threads"]),
                _ms(tvm["median_ms"]), _ms(tvm["p90_ms"]),
                _ms(ort["median_ms"]) if ort else "-", _ms(ort["p90_ms"]) if ort else "-",
                f"{run['ratio_tvm_over_ort']:.2f}x" if ort else "-",
                f"{diff:.1e}" if diff is not None else "-",
                f"{tvm['cold_start_ms']:.0f} / {ort['cold_start_ms']:.0f}" if ort
                else f"{tvm['cold_start_ms']:.0f} / -",
                f"{tvm['peak_rss_mb']:.0f} / {ort['peak_rss_mb']:.0f}" if ort
                else f"{tvm['peak_rss_mb']:.0f} / -",
                trials_cell(entry, m),
                _verdict(name, entry, run),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    geomean = results.get("geomean_tvm_over_ort") or geomean_ratios(results)
    if geomean:
        lines.append("\nGeometric mean of TVM/ORT: " + ", ".join(
            f"{g['geomean']:.2f}x over {g['models']} models at {t} thread{'s' * (t != '1')}"
            for t, g in geomean.items()) + ".")
    failed = {n: e["error"] for n, e in results["models"].items() if e.get("error")}
    if failed:
        lines.append("\nDid not compile: " + "; ".join(
            f"{LABELS.get(n, n)}: {msg}" for n, msg in failed.items()) + ".")
    size = results.get("install_size", {})
    if size.get("bundle_bytes"):
        line = (f"\nInstall size on the device: the neo-edge runtime bundle "
                f"({size['arch']}) takes {size['bundle_bytes'] / 1e6:.1f} MB")
        if size.get("onnxruntime_bytes"):
            line += (f", the onnxruntime package {size['onnxruntime_bytes'] / 1e6:.1f} MB "
                     f"({size['ratio_bundle_over_onnxruntime']:.3f}x)")
        lines.append(line + ".")
    behind = {LABELS.get(n, n): max(r.get("ratio_tvm_over_ort", 0) for r in e["runs"])
              for n, e in results["models"].items()
              if e["kind"] == "cnn" and any(r.get("ratio_tvm_over_ort", 0) > 1
                                            for r in e.get("runs", []))}
    if behind:
        lines.append(
            "\nCNNs behind ORT: " + ", ".join(f"{n} (up to {r:.2f}x)" for n, r in behind.items())
            + ". Their convolutions run the register-tiled template schedules "
            "(`neo_edge_runtime.compile.schedules`), the fastest of about 12 measured per kernel, "
            "3x3 ones Winograd's algorithm where it measured faster "
            "(`neo_edge_runtime.compile.winograd`); what remains is in those kernels and in the "
            "time between them against ONNX Runtime's hand-written AVX-512 assembly "
            "(MLAS). Per-kernel times and schedules: "
            f"`benchmarks/tuning/<target>/<model>/neo_edge_tuning.json`.")
    xgb = results["models"].get("xgboost")
    if xgb and "max_abs_diff_vs_xgboost" in xgb["runs"][0]:
        lines.append(f"\nXGBoost: max abs diff of the TVM probabilities against xgboost's own "
                     f"predictions {xgb['runs'][0]['max_abs_diff_vs_xgboost']:.1e}; ORT runs the "
                     "same tensor-operation lowering of the trees that TVM compiles.")
    lines.append(f"\nMeasured with `{results['command'].strip()}` in {results['elapsed_s']:.0f}s.")
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    """Latency per model (TVM vs ORT, ratio on each pair), and a footprint panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tvm_c, ort_c = "#2b6cb0", "#c05621"
    names = [n for n, e in results["models"].items() if e.get("runs")]
    threads = results["threads"]
    fig = plt.figure(figsize=(13, 8.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.25, 1])
    m, t = results["machine"], results["target"]
    fig.suptitle(f"neo-edge (TVM) vs ONNX Runtime: target {t['name']} on {m['cpu']} "
                 f"({m['physical_cores']} cores)", fontsize=13, fontweight="bold")

    # Latency: one group per (model, thread count), log scale: models span 4 decades.
    ax = fig.add_subplot(grid[0, :])
    groups = [(n, r) for n in names for r in results["models"][n]["runs"]]
    x = np.arange(len(groups))
    w = 0.38
    tv = [r["tvm"]["median_ms"] for _, r in groups]
    ov = [r["ort"]["median_ms"] if "ort" in r else np.nan for _, r in groups]
    ax.bar(x - w / 2, tv, w, color=tvm_c, label="TVM (neo-edge runtime)")
    ax.bar(x + w / 2, ov, w, color=ort_c, label="ONNX Runtime")
    ax.set_yscale("log")
    ax.set_ylabel("median latency (ms, log scale)")
    ax.set_xticks(x, [f"{LABELS.get(n, n)}\n{r['threads']} thread{'s' * (r['threads'] > 1)}"
                      for n, r in groups])
    for k, (_, r) in enumerate(groups):
        if "ratio_tvm_over_ort" not in r:
            continue
        ratio = r["ratio_tvm_over_ort"]
        top = max(tv[k], ov[k])
        ax.text(x[k], top * 1.25, f"{ratio:.2f}x", ha="center", va="bottom", fontsize=10,
                fontweight="bold", color="#276749" if ratio <= 1 else "#9b2c2c")
    ax.set_ylim(min(v for v in tv + ov if v == v) / 3, max(v for v in tv + ov if v == v) * 6)
    ax.set_title("Median latency, batch 1, lower is better (label: TVM/ORT; green = TVM at "
                 "or below ORT)", loc="left")
    ax.legend(loc="upper right")
    ax.grid(axis="y", which="major", alpha=0.3)

    # Cold start and peak RSS at the first (largest) thread count.
    first = {n: results["models"][n]["runs"][0] for n in names}
    xs = np.arange(len(names))
    n_first = results["models"][names[0]]["runs"][0]["threads"]
    for col, key, label in ((0, "cold_start_ms", "cold start: process start to first "
                             f"result (ms, {n_first} threads)"),
                            (1, "peak_rss_mb", "peak RSS of a load-and-run process "
                             f"(MB, {n_first} threads)")):
        ax = fig.add_subplot(grid[1, col])
        tv = [first[n]["tvm"][key] for n in names]
        ov = [first[n]["ort"][key] if "ort" in first[n] else np.nan for n in names]
        ax.bar(xs - w / 2, tv, w, color=tvm_c)
        ax.bar(xs + w / 2, ov, w, color=ort_c)
        ax.set_xticks(xs, [LABELS.get(n, n) for n in names], rotation=20, ha="right")
        ax.set_title(label, loc="left", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        for k in range(len(names)):
            ax.text(xs[k] - w / 2, tv[k], f"{tv[k]:.0f}", ha="center", va="bottom", fontsize=8)
            if ov[k] == ov[k]:
                ax.text(xs[k] + w / 2, ov[k], f"{ov[k]:.0f}", ha="center", va="bottom",
                        fontsize=8)

    ax = fig.add_subplot(grid[1, 2])
    size = results.get("install_size", {})
    bars = [("neo-edge\nbundle", size.get("bundle_bytes"), tvm_c),
            ("onnxruntime\npackage", size.get("onnxruntime_bytes"), ort_c)]
    bars = [(lbl, v / 1e6, c) for lbl, v, c in bars if v]
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars], width=0.5)
    for k, b in enumerate(bars):
        ax.text(k, b[1], f"{b[1]:.1f} MB", ha="center", va="bottom", fontsize=9)
    title = f"install size on the device ({size.get('arch', '?')})"
    if size.get("ratio_bundle_over_onnxruntime"):
        title += f": {size['ratio_bundle_over_onnxruntime']:.3f}x"
    ax.set_title(title, loc="left", fontsize=10)
    ax.set_ylabel("MB")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
