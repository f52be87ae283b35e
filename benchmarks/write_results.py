"""Write benchmarks/RESULTS.md from the JSON files of one run_all.sh run (tables, command, machine).

    python benchmarks/write_results.py [--results benchmarks/results] [--out benchmarks/RESULTS.md]

Every number in RESULTS.md comes from these files; a file that is missing, from a smoke (--quick) run, or
from another run_all.sh run than the others is flagged in the page rather than mixed in silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import gpu_check  # noqa: E402

SECTIONS = [
    ("overhead", "Decision overhead", "Time the SenCache hooks add per transformer call, as a fraction of one "
                                      "uncached call (target < 0.5 %)."),
    ("speedup", "Speed-up against the limit", "Measured wall-clock speed-up over the ideal one at the same NFE "
                                              "(target ≥ 95 %)."),
    ("memory", "Memory", "Cached state per CFG branch against one latent and one hidden state; peak RSS."),
    ("peers", "Peers side by side", "Same prompts and seeds through every cache; NFE, wall time and fidelity "
                                    "against the uncached frames."),
    ("demo_cost", "Cost of one demo generation", "One uncached generation at the demo settings (50 steps, CFG) on "
                                                 "2 threads and the transformer's share of it "
                                                 "(target ≤ 20 s, ≥ 80 %)."),
]


def headline(name: str, d: dict) -> list[str]:
    out = []
    if name == "overhead":
        for size, r in d.get("sizes", {}).items():
            out.append(f"{size} ({r['model']['params'] / 1e6:.2f} M params): hook code {r['hook_us_per_call']:.0f} µs "
                       f"per call = {common.pct(r['direct_overhead_fraction'], 3)} of the model's own work in the same "
                       f"calls (uncached call {r['forward_ms']:.2f} ms); "
                       f"A/B {common.pct(r['ab_overhead_fraction'], 2)}; "
                       f"target met: {'yes' if r['meets_target'] else 'no'}")
    elif name == "speedup":
        for r in d.get("runs", []):
            out.append(f"{r['label']}: NFE {r['nfe']}/{d['steps']}, speed-up {r['speedup']:.2f}× of ideal "
                       f"{r['ideal_speedup']:.2f}× = {common.pct(r['ratio'], 1)} "
                       f"(target met: {'yes' if r['meets_target'] else 'no'})")
    elif name == "memory":
        for size, r in d.get("sizes", {}).items():
            v = r["variants"]["default"]
            per = ", ".join(f"{b}: {x['total_bytes'] / 1024:.1f} KiB ({x['x_latent']:.2f}× latent, "
                            f"{x['x_hidden']:.2f}× hidden)" for b, x in v["branches"].items())
            out.append(f"{size}: per branch {per}; shared {v['shared_bytes'] / 1024:.1f} KiB; "
                       f"offload_residuals {r['offload']}")
    elif name == "peers":
        cd = d.get("cache_dit") or {}
        out.append(f"{len(d.get('prompts', []))} prompt(s) × {len(d.get('seeds', []))} seed(s), "
                   f"{d.get('steps')} steps, {d.get('repeats')} repeat(s); cache-dit: "
                   + (cd.get("version") or "?" if cd.get("available") else f"unavailable ({cd.get('reason')})"))
    elif name == "demo_cost":
        out.append(f"median {d['wall_s']:.2f} s per generation, transformer {common.pct(d['transformer_share'], 1)} "
                   f"of it ({d['steps']} steps, {d['threads']} threads); target met: "
                   f"{'yes' if d['meets_target'] else 'no'}")
    return out


def render(results_dir: Path, command: str) -> str:
    data, missing = {}, []
    for name, _, _ in SECTIONS:
        path = results_dir / f"{name}.json"
        if path.is_file():
            data[name] = json.loads(path.read_text())
        else:
            missing.append(name)
    run_ids = {d.get("run_id") for d in data.values()}
    machine = next(iter(data.values()))["machine"] if data else common.machine_info()
    lines = ["# Benchmark results", ""]
    lines += [f"Written by `benchmarks/write_results.py` from `{results_dir}/*.json`: every number below comes from "
              f"those files, measured in one run. Do not edit by hand; rerun the command.", ""]
    if any(d.get("quick") for d in data.values()):
        lines += ["> **SMOKE RUN (--quick): tiny models and settings that only check the scripts work. "
                  "These numbers are not results.**", ""]
    if len(run_ids) > 1:
        lines += [f"> **Warning: the files come from different runs ({', '.join(sorted(map(str, run_ids)))}).**", ""]
    if missing:
        lines += [f"> **Missing: {', '.join(missing)} (the script failed or was not run; see its log).**", ""]
    lines += ["## Command", "", "```", command, "```", "", "Each script, as run:", ""]
    lines += [f"- `{d['command']}` ({d.get('seconds', 0):.0f} s)" for d in data.values()]
    lines += ["", "## Machine", ""]
    lines += [f"- CPU: {machine.get('cpu_model')} (`nproc` = {machine.get('nproc')})",
              f"- torch {machine.get('torch')}, diffusers {machine.get('diffusers')}, Python {machine.get('python')}, "
              f"sencache {machine.get('sencache')} (commit {machine.get('git_commit')})",
              f"- torch threads {machine.get('torch_threads')}, OMP_NUM_THREADS={machine.get('omp_num_threads')}, "
              f"nice {machine.get('nice')}, load average at start {machine.get('load_average')}",
              f"- run id {next(iter(run_ids)) if len(run_ids) == 1 else 'mixed'}, "
              f"{next(iter(data.values()))['created'] if data else ''}", ""]
    for name, title, what in SECTIONS:
        lines += [f"## {title}", "", what, ""]
        d = data.get(name)
        if d is None:
            lines += ["Not available in this run.", ""]
            continue
        model = d.get("model") or {}
        if model:
            lines += [f"Model: {model.get('size')} ({model.get('source')}"
                      + (f", {model['path']}" if model.get("path") else "") + ")", ""]
        lines += [f"- {h}" for h in headline(name, d)] + [""]
        lines += [d.get("table_md", ""), ""]
        if d.get("notes"):
            lines += ["Notes:", ""] + [f"- {n}" for n in d["notes"]] + [""]
    lines += gpu_check_section(results_dir)
    return "\n".join(lines).rstrip() + "\n"


def gpu_check_section(results_dir: Path) -> list[str]:
    """benchmarks/gpu_check.py's table: the real size where run_all.sh found a GPU, --size tiny elsewhere."""
    path = results_dir / "gpu_check.json"
    lines = ["## GPU check", ""]
    if not path.is_file():
        return lines + ["Not available in this run.", ""]
    r = json.loads(path.read_text())
    if r["size"] == "tiny":
        lines += ["> No GPU on this machine: this is `gpu_check.py --size tiny` on the CPU (a 2-layer model, the "
                  "compiled part with the `eager` backend). It shows the script's code paths run and the outputs "
                  "agree; its times are not a GPU's and say nothing about the real-size speed.", ""]
    table = gpu_check.markdown(r).replace("## GPU check", "Run", 1)  # the page has its own heading
    return lines + [table.strip(), ""]


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(common.RESULTS_DIR))
    parser.add_argument("--out", default=str(common.BENCH_DIR / "RESULTS.md"))
    parser.add_argument("--command", default="bash benchmarks/run_all.sh")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.write_text(render(Path(args.results), args.command))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
