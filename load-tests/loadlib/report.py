"""``docs/benchmarks.md`` and ``docs/img/bench-*.png`` from a bench results file.

Everything here is derived from the results JSON alone, so a run can be rendered again
(``bench.py --report FILE``) after the text or the plots change, without measuring again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Result = dict[str, Any]

#: Order and colours of the systems in tables and plots.
ORDER = (
    "ours",
    "ours-grpc",
    "ours-nobatch",
    "kserve-plain",
    "fastapi-naive",
    "mosec",
    "litserve",
)
COLOURS = {
    "ours": "#1f77b4",
    "ours-grpc": "#17becf",
    "ours-nobatch": "#6baed6",
    "kserve-plain": "#d62728",
    "fastapi-naive": "#ff7f0e",
    "mosec": "#2ca02c",
    "litserve": "#9467bd",
}
PEERS = ("ours-nobatch", "kserve-plain", "fastapi-naive", "mosec", "litserve")


# -- derived figures ---------------------------------------------------------------------------


def engine_best(limits: Result) -> tuple[float, int]:
    """The engine's best throughput and the batch size it was reached at."""
    row = max(limits["engine"], key=lambda r: r["img_per_s"])
    return float(row["img_per_s"]), int(row["batch_size"])


def pipeline_limit(limits: Result, device: str) -> float:
    """What decode and engine allow together.

    On a GPU decode runs on the CPU while the model runs on the device: the slower one
    bounds. On CPU both share the cores: with ``n`` cores busy decoding at ``D`` img/s and
    the engine's ``t`` threads at ``E`` img/s, an image costs ``t/E + n/D`` core-seconds, so
    the pair reaches at most ``n / (t/E + n/D)``, and neither more than its own limit
    (with ``t = n`` this is the harmonic sum ``1 / (1/E + 1/D)``).
    """
    engine, _ = engine_best(limits)
    decode = float(limits["decode"]["img_per_s"])
    if device.startswith("cuda"):
        return min(engine, decode)
    cores = float(limits["decode"].get("workers", 1))
    threads = float(limits.get("torch_threads") or cores)
    return min(engine, decode, cores / (threads / engine + cores / decode))


def slo_ms(limits: Result) -> float:
    """The latency objective used for "throughput at equal p99".

    Ten times the unloaded cost of one image (decode on one thread plus a batch-1 forward
    pass), at least 100 ms, rounded up to two significant digits.
    """
    rows = sorted(limits["engine"], key=lambda r: r["batch_size"])
    single = float(rows[0]["ms_per_batch"]) / rows[0]["batch_size"]
    value = max(100.0, 10.0 * (single + float(limits["decode"]["ms_per_image"])))
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return float(math.ceil(value / scale) * scale)


def img_s(point: Result) -> float:
    """Images per second answered 200 at a point (closed loop: by Little's law)."""
    value = point.get("bench_images_per_s", point.get("images_per_s"))
    return 0.0 if value is None else float(value)


def in_flight(point: Result) -> int:
    """Images in flight at a closed-loop point: clients × images per request."""
    return int(point["concurrency"]) * int(point.get("images_per_request", 1))


def _ok(points: Sequence[Result]) -> list[Result]:
    return [p for p in points if "skipped" not in p and p.get("images_per_s") is not None]


def best(system: Result) -> Result | None:
    """The closed-loop point with the most images per second answered 200."""
    points = _ok(system.get("closed", []))
    return max(points, key=img_s) if points else None


def best_within(system: Result, limit_ms: float) -> Result | None:
    """The best closed-loop point whose p99 (of 200s) is within ``limit_ms``."""
    points = [
        p
        for p in _ok(system.get("closed", []))
        if p["latency_ok_ms"]["p99"] is not None
        and p["latency_ok_ms"]["p99"] <= limit_ms
        and set(p["status_counts"]) == {"200"}
    ]
    return max(points, key=img_s) if points else None


def at_concurrency(system: Result, level: int) -> Result | None:
    """The measured closed-loop point at ``level`` (not skipped)."""
    points = _ok(system.get("closed", []))
    return next((p for p in points if p["concurrency"] == level), None)


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` as ``1.23×`` (``-`` when undefined)."""
    if a is None or b is None or b <= 0:
        return "-"
    return f"{a / b:.2f}×"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _ordered(systems: dict[str, Result]) -> list[str]:
    return [k for k in ORDER if k in systems] + [k for k in systems if k not in ORDER]


# -- plots -------------------------------------------------------------------------------------


def plot_workload(workload: Result, results: Result, img_dir: Path) -> list[Path]:
    """Throughput-vs-concurrency and latency-vs-offered-rate plots for one workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {k: v["label"] for k, v in results["systems"].items()}
    device = results["settings"]["device"]
    key = workload["key"]
    written = []

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for name in _ordered(workload["systems"]):
        points = _ok(workload["systems"][name].get("closed", []))
        if points:
            ax.plot(
                [in_flight(p) for p in points],
                [img_s(p) for p in points],
                marker="o",
                label=labels.get(name, name),
                color=COLOURS.get(name),
            )
    engine, batch = engine_best(workload["limits"])
    ax.axhline(
        engine, color="black", linestyle="--", linewidth=1, label=f"engine limit (batch {batch})"
    )
    ax.axhline(
        pipeline_limit(workload["limits"], device),
        color="grey",
        linestyle=":",
        linewidth=1.2,
        label="decode + engine limit",
    )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("images in flight (closed loop: clients × images per request)")
    ax.set_ylabel("images/s answered 200")
    ax.set_title(f"{key}: throughput vs concurrency")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = img_dir / f"bench-{key}-throughput.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for name in _ordered(workload["systems"]):
        points = [
            p
            for p in workload["systems"][name].get("open", [])
            if p["latency_ok_ms"]["p99"] is not None
        ]
        if points:
            rates = [float(p.get("arrived_rps") or p["offered_rps"]) for p in points]
            colour = COLOURS.get(name)
            ax.plot(
                rates,
                [p["latency_ok_ms"]["p99"] for p in points],
                marker="o",
                color=colour,
                label=f"{labels.get(name, name)} p99",
            )
            ax.plot(
                rates,
                [p["latency_ok_ms"]["p50"] for p in points],
                linestyle="--",
                color=colour,
                linewidth=0.9,
                alpha=0.7,
            )
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate, requests/s (open loop, Poisson; one image per request)")
    ax.set_ylabel("latency, ms (solid p99, dashed p50)")
    ax.set_title(f"{key}: latency vs offered rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = img_dir / f"bench-{key}-latency.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    return written


# -- markdown ----------------------------------------------------------------------------------


def key_ratios(results: Result) -> list[str]:
    """The headline table: served/limit, batching on/off, ours/each peer."""
    device = results["settings"]["device"]
    labels = {k: v["label"] for k, v in results["systems"].items()}
    peers = [p for p in PEERS if p in results["systems"] and p != "ours-nobatch"]
    head = [
        "workload",
        "engine limit img/s",
        "decode limit img/s",
        "ours best img/s",
        "served / engine limit",
        "served / decode+engine limit",
        "batching on / off @64",
        *[f"ours / {labels[p]}" for p in peers],
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in results["workloads"]:
        systems = w["systems"]
        ours = systems.get("ours", {})
        ours_best = best(ours)
        engine, batch = engine_best(w["limits"])
        pipeline = pipeline_limit(w["limits"], device)
        served = img_s(ours_best) if ours_best else None
        on = at_concurrency(ours, 64)
        off = at_concurrency(systems.get("ours-nobatch", {}), 64)
        slo = slo_ms(w["limits"])
        cells = [
            f"`{w['key']}`",
            f"{_rate(engine)} (batch {batch})",
            _rate(w["limits"]["decode"]["img_per_s"]),
            _rate(served),
            _pct(served, engine),
            _pct(served, pipeline),
            ratio(img_s(on) if on else None, img_s(off) if off else None),
        ]
        for peer in peers:
            if peer not in systems:
                cells.append("-")
                continue
            other = best(systems[peer])
            mine_slo, other_slo = best_within(ours, slo), best_within(systems[peer], slo)
            cells.append(
                f"{ratio(served, img_s(other) if other else None)} "
                f"(p99≤{slo:.0f} ms: "
                f"{_ratio_slo(mine_slo, other_slo)})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pct(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "-"
    return f"{100 * a / b:.0f}%"


def _ratio_slo(mine: Result | None, other: Result | None) -> str:
    if mine is None:
        return "ours misses it"
    if other is None:
        return "peer misses it"
    return ratio(img_s(mine), img_s(other))


def workload_section(w: Result, results: Result) -> list[str]:
    """Limits, the concurrency table, the open-loop table and plots of one workload."""
    device = results["settings"]["device"]
    labels = {k: v["label"] for k, v in results["systems"].items()}
    limits = w["limits"]
    engine, batch = engine_best(limits)
    slo = slo_ms(limits)
    decode = limits["decode"]
    out = [
        f"## `{w['key']}`",
        "",
        f"{w['about']}. Corpus: {w['corpus_description']}.",
        "",
        "**Limits** (in process, no HTTP): engine images/s by batch size, then decode + resize "
        "on its own.",
        "",
        "| batch size | " + " | ".join(str(r["batch_size"]) for r in limits["engine"]) + " |",
        "|---|" + "---|" * len(limits["engine"]),
        "| engine img/s | " + " | ".join(_rate(r["img_per_s"]) for r in limits["engine"]) + " |",
        "| ms per batch | " + " | ".join(_ms(r["ms_per_batch"]) for r in limits["engine"]) + " |",
        "",
        f"Decode + resize: {_rate(decode['img_per_s'])} img/s with {decode['workers']} threads "
        f"({decode['ms_per_image']:.1f} ms per image on one thread). Engine limit "
        f"{_rate(engine)} img/s (batch {batch}); decode + engine together "
        f"{_rate(pipeline_limit(limits, device))} img/s"
        + (
            " (their CPU time per image adds up on the same cores)."
            if not device.startswith("cuda")
            else " (the slower of the two)."
        ),
        f'Latency objective for "at equal p99": {slo:.0f} ms.',
        "",
    ]
    systems = w["systems"]
    levels = sorted({in_flight(p) for s in systems.values() for p in s.get("closed", [])})
    out += [
        "**Closed loop**: images/s answered 200, with p50 / p99 latency in ms, by images in "
        "flight (concurrent clients × images per request: one image per request, except ours' "
        "gRPC row).",
        "",
        "| system | "
        + " | ".join(str(c) for c in levels)
        + f" | best | best at p99 ≤ {slo:.0f} ms | ours / it | CPU ms/img | memory |",
        "|---|" + "---|" * (len(levels) + 5),
    ]
    ours_best = best(systems.get("ours", {}))
    for name in _ordered(systems):
        system = systems[name]
        label = labels.get(name, name)
        if "error" in system:
            first = system["error"].strip().splitlines()[0][:120]
            out.append(f"| {label} | failed: {first} |" + " |" * (len(levels) + 4))
            continue
        cells = []
        for level in levels:
            raw = [q for q in system.get("closed", []) if in_flight(q) == level]
            p = next((q for q in _ok(raw)), None)
            if p is None:
                cells.append(f"skipped ({raw[0]['skipped']})" if raw else "-")
                continue
            lat = p["latency_ok_ms"]
            bad = {k: v for k, v in p["status_counts"].items() if k != "200"}
            errors = (" ⚠ " + ", ".join(f"{k}:{v}" for k, v in bad.items())) if bad else ""
            cells.append(f"{_rate(img_s(p))} <br>{_ms(lat['p50'])} / {_ms(lat['p99'])}{errors}")
        top, within = best(system), best_within(system, slo)
        cells.append(f"**{_rate(img_s(top))}** ({in_flight(top)})" if top else "-")
        cells.append(f"{_rate(img_s(within))} ({in_flight(within)})" if within else "none")
        cells.append(
            ""
            if name in ("ours", "ours-grpc") or not ours_best or not top
            else ratio(img_s(ours_best), img_s(top))
        )
        cpu = top.get("server_cpu_ms_per_image") if top else None
        cells.append("-" if cpu is None else f"{cpu:.1f}")
        cells.append(f"{system.get('rss_bytes', 0) / 2**20:,.0f} MiB")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += [
        "",
        f"![throughput vs concurrency, {w['key']}](img/bench-{w['key']}-throughput.png)",
        "",
        "**Open loop** (Poisson arrivals at fractions of each system's own best throughput): "
        "arrived req/s → answered 200 per s, p50 / p99 ms.",
        "",
        "| system | points |",
        "|---|---|",
    ]
    for name in _ordered(systems):
        opened = systems[name].get("open", [])
        if not opened:
            continue
        cells = []
        for p in opened:
            lat = p["latency_ok_ms"]
            extra = f", dropped {p['dropped']}" if p.get("dropped") else ""
            cells.append(
                f"{_rate(p.get('arrived_rps', p['offered_rps']))} → {_rate(p['ok_rps'])}: "
                f"{_ms(lat['p50'])} / {_ms(lat['p99'])}{extra}"
            )
        out.append(f"| {labels.get(name, name)} | " + "; ".join(cells) + " |")
    out += ["", f"![latency vs offered rate, {w['key']}](img/bench-{w['key']}-latency.png)", ""]
    return out


def render(results: Result, source: str) -> str:
    """The whole ``docs/benchmarks.md``."""
    machine = results["machine"]
    env = results.get("environment", {})
    for workload in results["workloads"]:  # results files from before it was recorded there
        workload["limits"].setdefault("torch_threads", env.get("torch_threads"))
    settings = results["settings"]
    plan = results["plan"]
    labels = results["systems"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by load-tests/bench.py from a results file; do not edit by hand. "
        "Re-render with: uv run load-tests/bench.py --report docs/benchmarks.json -->",
        "",
    ]
    if plan["name"] == "full" and results.get("note"):
        out += [f"> {results['note']}", ""]
    elif plan["name"] != "full" or results.get("note"):
        out += [
            "> **Provisional.** "
            + (
                f"`--{plan['name']}` run (fewer points, shorter). "
                if plan["name"] != "full"
                else ""
            )
            + (results.get("note") or "")
            + " The full table comes from the full command below on a quiet machine.",
            "",
        ]
    out += [
        f"Measured {results['started']} in {results.get('elapsed_s', 0) / 60:.1f} min with "
        f"`{results['command'].strip()}` (results file `{source}`).",
        "",
        "## Key ratios",
        "",
        "Best closed-loop throughput (images/s answered 200) per system; in brackets the same "
        "ratio among points whose p99 stays within the workload's latency objective (below).",
        "",
        *key_ratios(results),
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores available, "
        f"{machine['memory_gib']} GiB memory; {machine['os']}",
        f"- device: {env.get('device_name', settings['device'])} "
        f"(`--device {settings['device']} --dtype {settings['dtype']}`), torch "
        f"{env.get('torch', '?')} (CUDA {env.get('cuda') or 'none'}), torchvision "
        f"{env.get('torchvision', '?')}, {env.get('torch_threads', '?')} torch thread(s)"
        + (
            f" (`OMP_NUM_THREADS={settings['torch_threads']}` for every server and the limits)"
            if settings.get("torch_threads")
            else ""
        ),
        f"- Python {machine['python']}; {versions}",
        f"- load average at start {_load(results.get('loadavg_start'))}, "
        f"at end {_load(results.get('loadavg_end'))}",
        "",
        "## Systems",
        "",
        "All serve the same model directory (random weights, or the shapes demo detector) with "
        "the same decode, resize and crop (`predictor.tasks.classification.decode_image`; a "
        "detector's own preparation, `Detection.prepare`) on 127.0.0.1, one at a time, each "
        "started and stopped by the bench. The peers run classifiers only.",
        "",
        *[
            f"- **{v['label']}**: {v['description']} (driven with `--protocol {v['protocol']}`)"
            for v in labels.values()
        ],
        "",
    ]
    for workload in results["workloads"]:
        out += workload_section(workload, results)
    out += client_section(results)
    out += method_section(results)
    return "\n".join(out) + "\n"


def _load(values: Sequence[float] | None) -> str:
    return "-" if not values else " / ".join(f"{v:.2f}" for v in values)


def client_section(results: Result) -> list[str]:
    """The load generator's own ceiling."""
    ceiling = results.get("client_ceiling", {})
    if not ceiling:
        return []
    out = [
        "## The client's own ceiling",
        "",
        "`load-tests/loadgen.py` (aiohttp, one event loop) against a trivial HTTP server that "
        "answers without doing anything, 64 concurrent clients, on this machine:",
        "",
        "| corpus | requests/s | client CPU per request |",
        "|---|---|---|",
    ]
    for kind, r in ceiling.items():
        out.append(
            f"| {kind} | {_rate(r['throughput_rps'])} | "
            f"{r.get('client_cpu_us_per_request', 0):.0f} µs |"
        )
    out += [
        "",
        "The server and the client share the same cores here, so every number above includes "
        "the client's CPU; it is the ceiling of what one loadgen process can measure. "
        "aiohttp was chosen over httpx: against the same trivial server httpx's "
        "`AsyncClient` spent ~1-4 ms of CPU per request (≈150-750 req/s) to aiohttp's "
        "~0.1 ms (≈5-8k req/s).",
        "",
    ]
    return out


def method_section(results: Result) -> list[str]:
    """How the numbers are made, and how to run the bench."""
    plan = results["plan"]
    return [
        "## Method",
        "",
        f"- Closed loop: concurrency {', '.join(str(c) for c in plan['concurrency'])}. "
        "Latency settles at about clients / throughput, so each point first warms up for "
        "0.5 s + 1.2 × that (the queue reaches its steady state), then measures for "
        f"{plan['point_s']:.0f} s or 1.5 × that latency, whichever is longer; levels whose "
        f"latency would exceed {plan.get('latency_cap_s', 8):.0f} s are skipped (throughput "
        "has saturated long before). Throughput is clients / mean latency (Little's law, "
        "200s only): batching servers answer in bursts of a whole batch, which a short "
        "window would count as all or nothing; the count-based figure is in the results "
        "file too. Requests in flight at the end are awaited, not counted. Each server gets "
        f"{plan['server_warmup_s']:.0f} s of load (and every corpus image once) before its "
        "first point.",
        "- Open loop: Poisson arrivals (seed 0) at "
        f"{', '.join(f'{f:.0%}' for f in plan['rate_fractions'])} of the system's best "
        "closed-loop throughput; latency counts from each request's due time (no coordinated "
        "omission); each point lasts long enough for ~50 arrivals (at least "
        f"{plan['point_s']:.0f} s, at most {2 * plan['point_s']:.0f} s) after 1 s of warm-up; "
        "at most 512 in flight (beyond: dropped, counted); a sweep stops at the first rate "
        "that overloads the system (drops, errors, more than 2 s of arrivals still queued at "
        "the end, or p99 over the latency cap).",
        "- Limits: `loadlib/limits.py` in a separate process: "
        "`predictor.runtime.engine.Engine.infer` on ready-made batches of decoded corpus "
        "images (the engine's own stacking and normalisation included; a detector's batches "
        "mix the corpus' sizes, as served), and the model task's `prepare` (what the server's "
        "decode pool runs) over the corpus in a pool of one thread per core.",
        "- Memory: resident set of each server's whole process group after its run. CPU "
        "ms/img: the server's CPU time (all its processes) over its best point, divided by "
        "the images it answered then; next to the engine's own cost (limits) it shows what "
        "the serving stack adds per image.",
        "- Throughput counts images answered 200; anything else is shown next to the cell (⚠).",
        "",
        "## Running it",
        "",
        "```sh",
        "uv run --group peers load-tests/bench.py            # full run, all workloads",
        "uv run --group peers load-tests/bench.py --quick    # < 5 min: one workload, 3 levels",
        "uv run --group peers load-tests/bench.py --systems ours,mosec --workloads resnet50",
        "uv run load-tests/bench.py --report docs/benchmarks.json   # render this page again",
        "```",
        "",
        "On a GPU machine the same command runs unchanged: `--device auto` (the default) "
        "picks `cuda:0` when PyTorch sees a GPU and `--dtype auto` then runs float16, so every "
        "system runs the module on the GPU in float16 (ours, mosec and LitServe through the "
        "engine's pinned buffers and channels-last layout; the per-request peers move each "
        "image to the GPU); decoding stays on the CPU, and the decode + engine limit becomes "
        "the slower of the two. Name them to be explicit: `--device cuda --dtype float16` "
        "(or `bfloat16`), or `--device cpu` to measure the CPU on a GPU machine. "
        "`--torch-threads N|auto` sets `OMP_NUM_THREADS` for every server and the limits "
        "(auto: half the cores on CPU, the libraries' default on CUDA): PyTorch's OpenMP "
        "threads spin at barriers and stall when a decode thread takes their core, so on a "
        "small CPU as many threads as cores makes every server slower, some (mosec, whose "
        "decode workers are separate processes) by 25×.",
        "",
    ]


def write(results: Result, docs: Path, source: Path) -> list[Path]:
    """Write ``benchmarks.md`` and the plots under ``docs``; the paths written."""
    img_dir = docs / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for workload in results["workloads"]:
        if workload["systems"]:
            written += plot_workload(workload, results, img_dir)
    try:
        shown = source.resolve().relative_to(docs.resolve().parent)
    except ValueError:
        shown = source
    page = docs / "benchmarks.md"
    page.write_text(render(results, str(shown)), encoding="utf-8")
    return [page, *written]
