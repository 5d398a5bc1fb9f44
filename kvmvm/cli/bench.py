"""`kvmvm bench`: microVMs against QEMU and containers, side by side, with charts.

Runs the scripts in the repository's benchmarks/ directory (each one on its own,
`python benchmarks/<name>.py --json`), merges their output into DIR/results.json
and draws PNG charts into DIR (matplotlib, Agg backend; `pip install 'kvmvm[bench]'`).
A runtime that is absent or fails appears as "missing: reason", never as a number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

# name -> (script, quick args, full args, timeout quick s, timeout full s)
PLAN = {
    "startup": ("startup.py", ["--runs", "10"], ["--runs", "20"], 90, 300),
    "exits": ("exits.py", ["--n", "50000", "--runs", "3"], ["--n", "200000", "--runs", "10"], 120, 900),
    "memory": ("memory.py", ["--runs", "3"], ["--runs", "10"], 120, 600),
    "density": ("density.py", ["--cap", "50", "--time-limit", "25"],
                ["--cap", "300", "--time-limit", "150"], 150, 900),
    "isolation": ("isolation.py", [], [], 60, 120),
}


def benchmarks_dir() -> Path:
    """The repository's benchmarks/ (kvmvm is installed editable from the repo)."""
    import kvmvm

    env = os.environ.get("KVMVM_BENCHMARKS")
    d = Path(env) if env else Path(kvmvm.__file__).resolve().parent.parent / "benchmarks"
    return d


def run_one(name: str, quick: bool, bdir: Path) -> dict:
    script, qargs, fargs, qto, fto = PLAN[name]
    cmd = [sys.executable, str(bdir / script), "--json"] + (qargs if quick else fargs)
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=qto if quick else fto)
    except subprocess.TimeoutExpired:
        return {"missing": f"benchmark {script} timed out after {qto if quick else fto} s",
                "command": " ".join(cmd)}
    dt = round(time.monotonic() - t0, 1)
    if p.returncode != 0:
        tail = p.stderr.decode(errors="replace").strip().splitlines()[-3:]
        return {"missing": f"benchmark {script} exited {p.returncode}: {' | '.join(tail)}",
                "command": " ".join(cmd), "seconds": dt}
    try:
        r = json.loads(p.stdout)
    except ValueError as e:
        return {"missing": f"benchmark {script} printed no JSON: {e}", "command": " ".join(cmd)}
    r["command"] = " ".join(cmd)
    r["seconds"] = dt
    return r


# ----------------------------------------------------------------------------- charts

def _is_missing(v) -> bool:
    return isinstance(v, dict) and "missing" in v


def _short(reason: str, n: int = 48) -> str:
    return reason if len(reason) <= n else reason[: n - 1] + "…"


def _bar_chart(plt, title, xlabel, rows, path, log=False, err=None, annotate_fmt="{:.1f}"):
    """rows: list of (label, value or None, missing reason or None); horizontal bars."""
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4), dpi=80)
    labels = [r[0] for r in rows]
    vals = [r[1] if r[1] is not None else 0 for r in rows]
    colors = ["#d62728" if r[0].startswith("kvmvm") else "#1f77b4" if r[0].startswith("qemu")
              else "#7f7f7f" for r in rows]
    y = list(range(len(rows)))
    ax.barh(y, vals, color=colors, xerr=err, capsize=3 if err else 0)
    ax.set_yticks(y)
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    if log and any(v > 0 for v in vals):
        ax.set_xscale("log")
    top = max([v for v in vals if v] + [1])
    for i, r in enumerate(rows):
        if r[1] is None:
            ax.text(top * 0.01 if not log else min(v for v in vals if v > 0) if any(vals) else 1, i,
                    f" missing: {_short(r[2] or '')}", va="center", fontsize=8, color="#d62728")
        else:
            x = r[1] + (err[1][i] if err else 0)
            ax.text(x, i, " " + annotate_fmt.format(r[1]), va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def draw_charts(results: dict, out: Path) -> tuple[list[str], str | None]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return [], f"charts skipped: matplotlib not installed ({e}); pip install 'kvmvm[bench]'"
    files = []
    b = results["benchmarks"]
    st = b.get("startup", {})
    if not _is_missing(st) and st.get("results"):
        rows, lo, hi = [], [], []
        for n, v in st["results"].items():
            if _is_missing(v):
                rows.append((n, None, v["missing"]))
                lo.append(0)
                hi.append(0)
            else:
                rows.append((n, v["median"], None))
                lo.append(v["median"] - v["min"])
                hi.append(v["max"] - v["median"])
        files.append(_bar_chart(plt, "Startup: process spawn to exit, median (bars: min-max), log scale",
                                "ms", rows, out / "startup.png", log=True, err=[lo, hi]))
    mem = b.get("memory", {})
    if not _is_missing(mem) and mem.get("results"):
        rows = []
        for n, v in mem["results"].items():
            if _is_missing(v):
                rows.append((n, None, v["missing"]))
            elif "overhead_pss_mib" in v:
                rows.append((f"{n} (VMM beyond guest RAM)", v["overhead_pss_mib"], None))
            else:
                rows.append((f"{n} (per container)", v["pss_mib"], None))
        files.append(_bar_chart(plt, "Memory per instance: PSS, MiB (VMs: VMM process minus guest-touched RAM)",
                                "MiB (PSS)", rows, out / "memory.png"))
    den = b.get("density", {})
    if not _is_missing(den) and den.get("results"):
        rows_n, rows_r = [], []
        for n, v in den["results"].items():
            if _is_missing(v):
                rows_n.append((n, None, v["missing"]))
                rows_r.append((n, None, v["missing"]))
            else:
                rows_n.append((f"{n} ({v['stopped_by']})", v["vms"], None))
                rows_r.append((n, v["vms_per_s"], None))
        files.append(_bar_chart(plt, f"Density: idle 128 MiB microVMs held at once (cap {den.get('cap')})",
                                "VMs", rows_n, out / "density.png", annotate_fmt="{:.0f}"))
        files.append(_bar_chart(plt, "Creation rate: VMs/s until all reached hlt",
                                "VMs/s", rows_r, out / "density_rate.png"))
    ex = b.get("exits", {})
    if not _is_missing(ex) and ex.get("results"):
        rows = [(n, None, v["missing"]) if _is_missing(v) else (n, v["exits_per_s"], None)
                for n, v in ex["results"].items()]
        files.append(_bar_chart(plt, f"Port-I/O exits per second (pio-loop {ex.get('n')})", "exits/s",
                                rows, out / "exits.png", annotate_fmt="{:.0f}"))
    return files, None


# ----------------------------------------------------------------------------- provenance

def source_commit(bdir: Path) -> str:
    """The commit the benchmarks ran from ("<sha>-dirty" with local changes), or "unknown"."""
    try:
        sha = subprocess.run(["git", "-C", str(bdir), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "-C", str(bdir), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def scrub_paths(obj, repo: Path):
    """Results name no path of the machine they ran on: the checkout becomes relative, the
    home directory `~`, temporary directories `$TMP`."""
    import re
    import tempfile

    text = json.dumps(obj)
    for path, repl in ((str(repo.resolve()) + "/", ""), (str(repo.resolve()), "."),
                       (os.path.expanduser("~") + "/", "~/"), (tempfile.gettempdir() + "/", "$TMP/")):
        if len(path) > 2:
            text = text.replace(path, repl)
    text = re.sub(r"\$TMP/[^\s\"/]+", "$TMP/...", text)
    return json.loads(text)


def environment_line(results: dict) -> str:
    """Where the numbers come from, in one line, with nothing of this machine's file paths."""
    h = results.get("host", {})
    return (f"{h.get('os', '?')}, kernel {h.get('kernel', '?')}, {h.get('cpus', '?')} CPUs ({h.get('cpu', '?')}), "
            f"{h.get('mem_total_mib', '?')} MiB, /dev/kvm: {h.get('kvm', '?')}, Python {h.get('python', '?')}, "
            f"load average at start {' '.join(h.get('loadavg', []) or ['?'])}")


def markdown_report(results: dict) -> str:
    """DIR/results.md: the command, the commit, the environment and the summary, as written."""
    lines = ["# kvmvm bench results", "",
             f"- command: `{results.get('kvmvm_command')}`",
             f"- commit: `{results.get('commit')}`",
             f"- started: {results.get('started')}, took {results.get('duration_s')} s",
             f"- environment: {environment_line(results)}", "",
             "Charts: " + ", ".join(f"[{c}]({c})" for c in results.get("charts", [])) if results.get("charts")
             else "Charts: none", "", "```"]
    lines += summary_lines(results)
    lines += ["```", ""]
    return "\n".join(lines)


def html_report(results: dict, out: Path) -> str:
    """One self-contained page: provenance, the summary table and every chart inline."""
    import base64
    import html

    h = results.get("host", {})
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in [("command", results.get("kvmvm_command")), ("commit", results.get("commit")),
                                ("started", results.get("started")), ("duration", f"{results.get('duration_s')} s"),
                                ("cpu", h.get("cpu")), ("cpus", h.get("cpus")), ("memory", f"{h.get('mem_total_mib')} MiB"),
                                ("kernel", h.get("kernel")), ("kvm", h.get("kvm")), ("os", h.get("os")),
                                ("load average at start", " ".join(h.get("loadavg", [])))])
    table = []
    for line in summary_lines(results):
        if not line.startswith(" "):
            table.append(f"<tr class=section><th colspan=2>{html.escape(line)}</th></tr>")
        else:
            name, _, rest = line.strip().partition(" ")
            table.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(rest.strip())}</td></tr>")
    charts = []
    for name in results.get("charts", []):
        data = base64.b64encode((out / name).read_bytes()).decode()
        charts.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                      f"<figcaption>{html.escape(name)}</figcaption></figure>")
    return ("<!doctype html><html><head><meta charset=utf-8><title>kvmvm bench</title><style>"
            "body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}"
            "tr.section th{background:#eee}img{max-width:100%}</style></head><body>"
            "<h1>kvmvm bench</h1><h2>Where and what</h2><table>" + rows + "</table>"
            "<h2>Results</h2><p>A runtime that is absent or failed shows as \"missing: reason\", never as a number.</p>"
            "<table>" + "".join(table) + "</table><h2>Charts</h2>" + "".join(charts) + "</body></html>\n")


# ----------------------------------------------------------------------------- summary

def summary_lines(results: dict) -> list[str]:
    b = results["benchmarks"]
    out = []

    def miss(v):
        return f"missing: {v['missing']}"

    if "startup" in b:
        st = b["startup"]
        out.append("startup (spawn to exit, median ms; min-max):")
        if _is_missing(st):
            out.append("  " + miss(st))
        else:
            for n, v in st["results"].items():
                out.append(f"  {n:<15} " + (miss(v) if _is_missing(v) else
                                            f"{v['median']:8.1f}  ({v['min']:.1f}-{v['max']:.1f}, n={v['n']})"))
            out.append(f"  kvmvm/qemu median ratio: {st.get('ratio_kvmvm_qemu_median')}")
    if "exits" in b:
        ex = b["exits"]
        out.append("exits/s:")
        if _is_missing(ex):
            out.append("  " + miss(ex))
        else:
            for n, v in ex["results"].items():
                out.append(f"  {n:<38} " + (miss(v) if _is_missing(v) else f"{v['exits_per_s']}"))
    if "memory" in b:
        mem = b["memory"]
        out.append("memory per instance (MiB):")
        if _is_missing(mem):
            out.append("  " + miss(mem))
        else:
            for n, v in mem["results"].items():
                if _is_missing(v):
                    out.append(f"  {n:<15} " + miss(v))
                elif "overhead_rss_mib" in v:
                    out.append(f"  {n:<15} VMM overhead RSS {v['overhead_rss_mib']}, PSS {v['overhead_pss_mib']}")
                else:
                    out.append(f"  {n:<15} RSS {v['rss_mib']}, PSS {v['pss_mib']}")
    if "density" in b:
        den = b["density"]
        out.append("density:")
        if _is_missing(den):
            out.append("  " + miss(den))
        else:
            for n, v in den["results"].items():
                out.append(f"  {n:<11} " + (miss(v) if _is_missing(v) else
                                            f"{v['vms']} VMs held, {v['vms_per_s']} VMs/s (stopped by {v['stopped_by']})"))
    if "isolation" in b:
        iso = b["isolation"]
        out.append("isolation:")
        if _is_missing(iso):
            out.append("  " + miss(iso))
        else:
            for n, v in iso["results"].items():
                if _is_missing(v):
                    out.append(f"  {n:<15} " + miss(v))
                elif "kernel_seen" in v:
                    out.append(f"  {n:<15} host kernel visible: {v['host_kernel_visible']} "
                               f"(uname -r inside: {v['kernel_seen']}), PIDs visible: {v['pids_visible']}")
                else:
                    m = v.get("measured", {})
                    out.append(f"  {n:<15} own guest; reports: {' | '.join(v['guest_reports'])}; "
                               f"host kernel in its report (measured): {m.get('host_kernel_in_guest_report')}; "
                               "no host PIDs/files/syscalls (by construction, not measured)")
    return out


@click.command("bench")
@click.option("--quick", is_flag=True, help="Fewer runs and a 50-VM density cap (under 3 minutes).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="bench-results",
              show_default=True, help="Directory for results.json and the PNG charts.")
@click.option("--only", type=str, default="",
              help="Comma-separated subset of: " + ",".join(PLAN))
@click.option("--html", "html", is_flag=True, help="Also write DIR/report.html: the table and the charts embedded.")
def cli(quick, out_dir, only, html):
    """Benchmark kvmvm against QEMU microvm and container runtimes on this host."""
    from kvmvm.errors import ConfigError

    names = [n for n in only.split(",") if n] or list(PLAN)
    bad = [n for n in names if n not in PLAN]
    if bad:
        raise ConfigError(f"unknown benchmark(s): {', '.join(bad)} (choose from {', '.join(PLAN)})")
    bdir = benchmarks_dir()
    if not (bdir / "benchlib.py").exists():
        raise ConfigError(f"benchmark scripts not found in {bdir} (run from a kvmvm checkout, "
                          "or set KVMVM_BENCHMARKS)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(bdir))
    import benchlib

    t0 = time.monotonic()
    results = {"kvmvm_command": "kvmvm bench" + (" --quick" if quick else "") +
               (f" --only {only}" if only else "") + f" --out {out_dir}",
               "mode": "quick" if quick else "full",
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "commit": source_commit(bdir),
               "host": benchlib.host_info(), "benchmarks": {}}
    for n in names:
        click.echo(f"kvmvm bench: {n} ...", err=True)
        results["benchmarks"][n] = run_one(n, quick, bdir)
    results["duration_s"] = round(time.monotonic() - t0, 1)
    results = scrub_paths(results, bdir.parent)
    files, why = draw_charts(results, out)
    results["charts"] = [os.path.basename(f) for f in files]
    if why:
        results["charts_note"] = why
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=1)
    (out / "results.md").write_text(markdown_report(results))
    for line in summary_lines(results):
        click.echo(line)
    if html:
        (out / "report.html").write_text(html_report(results, out))
    click.echo(f"wrote {out / 'results.json'}, results.md" + (f" and {len(files)} charts" if files else "") +
               (" and report.html" if html else "") + f" in {results['duration_s']} s")
    if why:
        click.echo(f"kvmvm: {why}", err=True)
    return 0
