"""report.json (the contract), report.md with a plot beside it, manifest.json, and the
table printed at the end of a run."""
from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from compressor.core.atomic import atomic_path, write_json, write_text

PACKAGES = ("compressor", "torch", "torchvision", "transformers", "onnx", "onnxruntime", "openvino", "hydra-core",
            "omegaconf", "safetensors", "numpy", "compressor-tensorrt", "tensorrt")  # those installed are recorded


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measured point: baseline, each stage, the engine."""
    out = []
    if report.get("baseline"):
        out.append({"step": "baseline", "what": "PyTorch fp32", **report["baseline"]})
    for s in report.get("stages", []):
        out.append({"step": s["name"], "what": s["kind"], **s})
    for e in engines(report):
        out.append({"step": "engine", "what": f"{e['target']} {e['precision']}", **e})
    return out


def engines(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every engine the run built (`engines` when there are several, else `engine`)."""
    return report.get("engines") or ([report["engine"]] if report.get("engine") else [])


def _g(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"  # None: NaN/Inf, stored as null in report.json


def _nan(v: float | None) -> float:
    return float("nan") if v is None else v


def _fmt_metric(row: dict[str, Any]) -> str:
    if row.get("not_run"):
        return "not run"
    return ", ".join(_g(v) if v is None else f"{v:.4f}" for v in (row.get("metric") or {}).values()) or "n/a"


def _metric_title(report: dict[str, Any]) -> str:
    return ", ".join((report.get("baseline") or {}).get("metric") or {}) or "metric"


def _fmt(row: dict[str, Any], key: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if key == "latency_ms":
        return f"{v['p50']:.3f}"
    if key == "size_bytes":
        return f"{v / 1024:.1f} KiB"
    if key == "macs":
        return f"{v / 1e6:.2f} M"
    if key == "params":
        return f"{v / 1e3:.1f} k"
    return f"{v:,}" if isinstance(v, int) else str(v)


COLUMNS = [("metric", "metric"), ("params", "params"), ("macs", "MACs"), ("size_bytes", "size"),
           ("latency_ms", "p50 ms"), ("seconds", "seconds")]


def _sig(v: float | None, digits: int = 3) -> str:
    """`digits` significant digits, no exponent below 10**digits (23.1, 0.123, 1234)."""
    if v is None:
        return "n/a"
    return f"{v:.{digits}g}" if abs(v) < 10 ** digits - 0.5 else f"{v:.0f}"


def _si(v: float, units: tuple[str, ...] = ("", "k", "M", "G", "T"), step: float = 1000.0) -> str:
    """57634 -> 57.6k, 1.82e9 -> 1.82G; with units and step 1024, bytes -> KiB, MiB, ..."""
    for unit in units:
        if abs(v) < 999.5 or unit == units[-1]:
            return f"{_sig(v)}{unit}"
        v /= step
    return ""  # not reached


def _cell(row: dict[str, Any], key: str) -> str:
    """One cell of the terminal table: short, with the full value in report.json."""
    if key.startswith("metric:"):
        metric = row.get("metric") or {}
        if row.get("not_run") or key[7:] not in metric:
            return "not run" if row.get("not_run") else "-"
        v = metric[key[7:]]  # 4 significant digits, trailing zeros kept so the column lines up
        return "n/a" if v is None else f"{v:#.4g}".rstrip(".")
    v = row.get(key)
    if v is None:
        return "-"
    if key == "size_bytes":
        return _si(v, (" B", " KiB", " MiB", " GiB", " TiB"), 1024.0)
    if key == "latency_ms":
        return _sig(v["p50"])
    return _si(v) if key in ("params", "macs") else _sig(v)


def _gate_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def terminal_table(report: dict[str, Any], console: Console) -> Table:
    """The run's table for the console's width: the columns that fit, in the order below,
    dropping seconds, MACs, the extra metrics, then params while a row would not fit on one line
    (report.md and report.json keep them all)."""
    names = list((report.get("baseline") or {}).get("metric") or {}) or \
        list(next((r.get("metric") for r in rows(report) if r.get("metric")), None) or {}) or ["metric"]
    columns = [(f"metric:{n}", n) for n in names] + [("params", "params"), ("macs", "MACs"), ("size_bytes", "size"),
                                                      ("latency_ms", "p50 ms"), ("seconds", "seconds")]
    drop = ["seconds", "macs"] + [f"metric:{n}" for n in reversed(names[1:])] + ["params"]
    while True:
        table = Table(title=f"{report['recipe']}: {report['status']}", box=box.SIMPLE_HEAD, show_edge=False)
        table.add_column("step", no_wrap=True)
        table.add_column("what")  # wraps between target and precision when the width is short
        for _, title in columns:
            table.add_column(title, justify="right", no_wrap=True)
        for row in rows(report):
            table.add_row(row["step"], row["what"], *[_cell(row, k) for k, _ in columns])
        if not drop or console.measure(table, options=console.options.update_width(1000)).maximum <= console.width:
            return table
        gone = drop.pop(0)
        columns = [c for c in columns if c[0] != gone]


def print_table(report: dict[str, Any], console: Console) -> None:
    console.print(terminal_table(report, console))
    for name, g in report.get("gates", {}).items():
        mark = "[green]passed[/]" if g["passed"] else "[red]FAILED[/]"
        console.print(f"gate {escape(name)}: {_gate_value(g['value'])} (limit {escape(_gate_value(g['limit']))}) {mark}")
    for line in training_lines(report):
        console.print(line, markup=False)
    # an error is printed once, by the command line, after this table


def training_lines(report: dict[str, Any]) -> list[str]:
    """One line per training stage: epochs, throughput, and what the loop did (resumed, stopped
    early, mixed precision, processes); for a student, distilled vs labels-only."""
    lines, metric = [], next(iter((report.get("baseline") or {}).get("metric") or {}), None)
    for st in report.get("stages", []):
        n = st.get("notes") or {}
        if "epoch_loss" in n:
            done = [f"{len(n['epoch_loss'])} epochs", f"{n.get('samples_per_s', 0):,.0f} samples/s"]
            if "amp" in n:
                done.append(f"amp {n['amp']}")
            if "world_size" in n:
                done.append(f"{n['world_size']} processes")
            if "resumed_from_epoch" in n:
                done.append(f"resumed after epoch {n['resumed_from_epoch']}")
            if n.get("best_epoch"):
                done.append(f"kept epoch {n['best_epoch']}" + (" (stopped early)" if n.get("stopped_early") else ""))
            lines.append(f"training {st['name']}: " + ", ".join(done))
        if metric and metric in (n.get("labels_only_metric") or {}):
            d, lo = n["distilled_metric"][metric], n["labels_only_metric"][metric]
            lines.append(f"distillation {st['name']}: {metric} {d:.4f} distilled vs {lo:.4f} on labels alone "
                         f"(same student, seed and epochs): {100 * (d - lo):+.2f} points")
    return lines


def parity_line(p: dict[str, Any]) -> str:
    """What parity judged (statistic, tolerance, samples) and the statistics reported beside it."""
    line = (f"- parity with PyTorch on {p['samples']} inputs: {p.get('statistic', 'relative_error')} "
            f"{_g(p.get('value'))} (tolerance {_g(p.get('tolerance'))}, {'passed' if p['passed'] else '**failed**'}); ")
    if "tokens" in p:  # a language model: windows of tokens, compared as next-token distributions
        return line + (f"over {p['tokens']} tokens: KL divergence to the PyTorch model {_g(p['kld'])}, "
                       f"top-1 next-token agreement {_g(p['token_agreement'])}")
    line += f"cosine mean {_g(p.get('cosine_mean'))}, min {_g(p.get('cosine_min'))}; max abs {_g(p['max_abs'])}"
    if p.get("kl_mean") is not None:
        line += f"; KL {_g(p['kl_mean'])}; top-1 agreement {_g(p.get('agreement'))}"
        if p.get("agreement_confident") is not None:
            line += f", {_g(p['agreement_confident'])} on the {p['confident_samples']} confident inputs"
    return line


def markdown(report: dict[str, Any], plot: str | None) -> str:
    lines = [f"# {report['recipe']}: {report['status']}", ""]
    titles = [_metric_title(report) if k == "metric" else t for k, t in COLUMNS]
    lines.append("| step | what | " + " | ".join(titles) + " |")
    lines.append("|" + "---|" * (len(COLUMNS) + 2))
    for row in rows(report):
        cells = [_fmt_metric(row) if k == "metric" else _fmt(row, k) for k, _ in COLUMNS]
        lines.append(f"| {row['step']} | {row['what']} | " + " | ".join(cells) + " |")
    if report.get("gates"):
        lines += ["", "## Gates", "", "| gate | value | limit | passed |", "|---|---|---|---|"]
        for name, g in report["gates"].items():
            lines.append(f"| {name} | {g['value']} | {g['limit']} | {'yes' if g['passed'] else '**no**'} |")
    if len(engines(report)) > 1:
        lines += side_by_side(report)
    for e in engines(report):
        lines += ["", f"## Engine: {e['target']} {e['precision']}", "",
                  f"- file: `{e['path']}` ({e['size_bytes']} bytes), provider {e['provider']}",
                  f"- {e['not_run']} (latency, parity and the metric; the engine's folder has what measures them "
                  "where it runs)" if e.get("not_run") else parity_line(e["parity"])]
        if e.get("runtime_fp32"):
            r = e["runtime_fp32"]
            lines.append(f"- against an FP32 engine of the same target (the model before the pipeline, timed "
                         f"interleaved): {r['speedup']:.2f}x faster, {r['size_bytes'] / max(e['size_bytes'], 1):.2f}x smaller")
        if e.get("generation"):
            g = e["generation"]
            lines.append(f"- generation (batch 1, {g.get('prompt_len')}-token prompt, {g.get('new_tokens')} new tokens): "
                         f"time to first token {g['ttft_ms']:.1f} ms, decode {g['decode_tokens_per_s']:.1f} tokens/s; "
                         f"greedy output identity with FP32 {e.get('greedy_identity')}; perplexity vs its PyTorch "
                         f"model {100 * e.get('ppl_vs_model', 0):+.3f}%")
        if e.get("throughput"):
            lines.append(f"- throughput: {e['throughput']['samples_per_s']:,.0f} samples/s at batch {e['throughput']['batch']}")
        if e.get("notes", {}).get("kernels"):
            lines.append(f"- kernels the runtime runs: {e['notes']['kernels']}")
    if report.get("search"):
        lines += search_lines(report["search"])
    if report.get("metric_unavailable"):
        lines += ["", f"Metric: {report['metric_unavailable']}."]
    if training_lines(report):
        lines += ["", "## Training", ""] + [f"- {line}" for line in training_lines(report)]
    if report.get("skipped"):
        lines += ["", f"Skipped (not in `pipeline`): {', '.join(report['skipped'])}"]
    if "not_bit_exact" in report:
        odd = report["not_bit_exact"]
        lines += ["", "Bit-exact: the same recipe and seed on this machine give the same checkpoints and engine "
                  "(sha256 in manifest.json)" + (f", except {', '.join(odd)}." if odd else ", for every stage.")]
    if report.get("error"):
        lines += ["", f"**Error:** {report['error']}"]
    if plot:
        lines += ["", f"![metric, size and latency per step]({plot})"]
    return "\n".join(lines) + "\n"


def side_by_side(report: dict[str, Any]) -> list[str]:
    """Every engine of the run in one table: size, latency, parity, the recipe's metric."""
    metric = (report.get("baseline") or {}).get("metric") or {}
    name = next(iter(metric), None)
    lines = ["", "## Engines side by side", "",
             f"| target | precision | size KiB | p50 ms | vs own FP32 | parity | {name or 'metric'} |", "|---|---|---|---|---|---|---|"]
    for e in engines(report):
        if e.get("not_run"):
            cells = [e["not_run"]] * 4
        else:
            par = e["parity"]
            cells = [f"{e['latency_ms']['p50']:.3f}",
                     f"{e['runtime_fp32']['speedup']:.2f}x" if e.get("runtime_fp32") else "-",
                     f"{par.get('statistic')} {_g(par.get('value'))} ({'ok' if par['passed'] else 'failed'})",
                     _g((e.get("metric") or {}).get(name))]
        lines.append(f"| {e['target']} | {e['precision']} | {e['size_bytes'] / 1024:.1f} | " + " | ".join(cells) + " |")
    return lines


def search_lines(search: dict[str, Any]) -> list[str]:
    """search=budget: every trial with what it changed and what it measured."""
    lines = ["", "## Budget search", "", f"{search['conclusion']}.", "",
             "| trial | overrides | status | metric | drop | p50 ms | size KiB |", "|---|---|---|---|---|---|---|"]
    for t in search["trials"]:
        cells = [f"{t[k]:.4f}" if t.get(k) is not None else "-" for k in ("metric", "drop")]
        cells += [f"{t['latency_ms']:.3f}" if t.get("latency_ms") is not None else "-",
                  f"{t['size_bytes'] / 1024:.1f}" if t.get("size_bytes") is not None else "-"]
        best = " (best)" if t["trial"] == search["best_trial"] else ""
        status = t["status"] + (f": {t['error']}" if t.get("error") else "")
        lines.append(f"| {t['trial']}{best} | `{' '.join(t['overrides']) or 'as written'}` | {status} | " + " | ".join(cells) + " |")
    return lines + ["", "Each trial's full run folder is under `trials/`; `compressor report RUN/trials` tabulates and plots them."]


def plot_steps(report: dict[str, Any], path: Path) -> bool:
    points = [p for p in rows(report) if not p.get("not_run")]
    if len(points) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{p['step']}\n{p['what']}" for p in points]
    metric = next(iter(points[0].get("metric") or {}), None)
    series = [("size (KiB)", [p["size_bytes"] / 1024 for p in points]),
              ("latency p50 (ms)", [p["latency_ms"]["p50"] for p in points])]
    if metric:
        series.insert(0, (metric, [_nan(p["metric"].get(metric)) for p in points]))
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.6))
    for ax, (title, values) in zip(axes, series):
        ax.bar(range(len(values)), values, color=["#888"] + ["#4c72b0"] * (len(values) - 2) + ["#dd8452"])
        ax.set_title(title)
        ax.set_xticks(range(len(values)), names, rotation=30, ha="right", fontsize=8)
        if title == metric:
            lo = min(values)
            ax.set_ylim(max(0.0, lo - 0.05), 1.0 if max(values) <= 1 else None)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def sensitivity_section(report: dict[str, Any], out_dir: Path) -> str:
    """Markdown for each stage whose notes hold a sensitivity scan ({layer: {ratio: metric}}):
    a table, and a plot of metric vs. ratio (one line per layer) written beside report.md."""
    text = ""
    scans = [s for s in report.get("stages", []) if (s.get("notes") or {}).get("sensitivity")]
    for i, stage in enumerate(scans):
        notes = stage["notes"]
        scan = {layer: {float(r): v for r, v in row.items()} for layer, row in notes["sensitivity"].items()}
        ratios = sorted({r for row in scan.values() for r in row})
        chosen = notes.get("layer_ratios") or {}
        lines = ["", f"## Sensitivity ({stage['name']}): {_metric_title(report)} when one layer loses a fraction "
                     "of its channels", "", "| layer | " + " | ".join(f"{r:g}" for r in ratios)
                 + (" | chosen ratio |" if chosen else " |"), "|" + "---|" * (len(ratios) + 1 + bool(chosen))]
        for layer, row in scan.items():
            cells = [f"{row[r]:.4f}" if row.get(r) is not None else "-" for r in ratios]
            lines.append(f"| {layer} | " + " | ".join(cells) + (f" | {chosen.get(layer, '-')} |" if chosen else " |"))
        if "baseline" in notes:
            lines.append(f"\nUnpruned: {notes['baseline']:.4f}."
                         + (f" Chosen ratios remove {notes['macs_reduction']:.1%} of the MACs." if "macs_reduction" in notes else ""))
        name = "sensitivity.png" if i == 0 else f"sensitivity_{stage['name']}.png"
        _plot_sensitivity(scan, notes.get("baseline"), _metric_title(report), out_dir / name)
        lines += ["", f"![{_metric_title(report)} vs. pruning ratio per layer]({name})"]
        text += "\n".join(lines) + "\n"
    return text


def _plot_sensitivity(scan: dict[str, dict[float, float]], baseline: float | None, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for layer, row in scan.items():
        points = sorted((r, v) for r, v in row.items() if v is not None)
        if baseline is not None:
            points.insert(0, (0.0, baseline))
        ax.plot([r for r, _ in points], [v for _, v in points], marker="o", label=layer)
    ax.set_xlabel("fraction of the layer's output channels removed")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, ncol=2 if len(scan) > 8 else 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def layers_section(report: dict[str, Any], out_dir: Path, top: int = 24) -> str:
    """Size by layer, before the pipeline and after it: where the bytes went (largest layers first)."""
    sizes = report.get("layer_bytes")
    if not sizes or not sizes["baseline"]:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(set(sizes["baseline"]) | set(sizes["final"]),
                   key=lambda n: -max(sizes["baseline"].get(n, 0), sizes["final"].get(n, 0)))[:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2))
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], [sizes["baseline"].get(n, 0) / 1024 for n in names], height=0.4, label="baseline",
            color="#999")
    ax.barh([i - 0.2 for i in y], [sizes["final"].get(n, 0) / 1024 for n in names], height=0.4, label="after the pipeline",
            color="#4c72b0")
    ax.set_yticks(list(y), [n or "(top level)" for n in names], fontsize=7)
    ax.set_xlabel("KiB (weights at their stored precision)")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_dir / "size_by_layer.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    before, after = sum(sizes["baseline"].values()), sum(sizes["final"].values())
    return (f"\n## Size by layer\n\n{before / 1024:.1f} KiB -> {after / 1024:.1f} KiB; the {len(names)} largest layers:\n\n"
            "![size by layer, baseline and after the pipeline](size_by_layer.png)\n")


def git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(out_dir: Path, seed: int, report: dict[str, Any]) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != "manifest.json" and not p.name.startswith("."))
    return {
        "artifacts": [{"path": str(p.relative_to(out_dir)), "bytes": p.stat().st_size, "sha256": sha256(p)}
                      for p in files if ".hydra" not in p.parts],
        "packages": versions,
        "python": platform.python_version(),
        "machine": {"system": platform.system(), "arch": platform.machine(), "processor": platform.processor()},
        "seed": seed,
        "git_sha": git_sha(),
        # per engine, what it is bound to beyond the packages (a TensorRT plan: its TensorRT version and GPU)
        "engines": [{"target": e["target"], "precision": e["precision"], "provider": e["provider"],
                     **({"runtime": e["notes"]["runtime"]} if "runtime" in (e.get("notes") or {}) else {})}
                    for e in engines(report)],
    }


def write_readable(report: dict[str, Any], out_dir: Path) -> None:
    """report.md and the plots beside it, from the report alone (`compressor report` redoes them)."""
    has_plot = plot_steps(report, out_dir / "report.png")
    write_text(out_dir / "report.md", markdown(report, "report.png" if has_plot else None)
               + sensitivity_section(report, out_dir) + layers_section(report, out_dir))


def write_outputs(report: dict[str, Any], plan, out_dir: Path, console: Console) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_readable(report, out_dir)
    write_json(out_dir / "report.json", report)
    if plan.config.get("logger") == "tensorboard":
        from compressor.report.tensorboard import write_tensorboard

        overrides = out_dir / ".hydra" / "overrides.yaml"
        pairs = [str(o).lstrip("+~").split("=", 1) for o in (yaml.safe_load(overrides.read_text()) if overrides.is_file() else None) or []]
        write_tensorboard(report, engines(report), {p[0]: p[1] for p in pairs if len(p) == 2}, out_dir / "tensorboard")
    write_json(out_dir / "manifest.json", manifest(out_dir, plan.seed, report))
    print_table(report, console)
