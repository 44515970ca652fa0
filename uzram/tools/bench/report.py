"""The report: the table on the terminal, bench.json, report.md, the charts, and the README
section a run can replace.
"""

import json
import os
import shlex
import sys

from .charts import write_charts
from .common import BenchError


COLUMNS = (
    # header, key, format
    ("row", None, None),
    ("write MB/s", "write_mb_s", "{:.0f}"),
    ("read MB/s", "read_mb_s", "{:.0f}"),
    ("4K p50 us", "read4k_p50_us", "{:.1f}"),
    ("4K p99 us", "read4k_p99_us", "{:.1f}"),
    ("serial MB/s", "serial_mb_s", "{:.0f}"),
    ("serial p99 us", "serial_p99_us", "{:.0f}"),
    ("nbdkit us/pg", "server_cpu_us_page", "{:.1f}"),
    ("wkr us/pg", "worker_cpu_us_page", "{:.1f}"),
    ("mem growth MiB", "rss_growth", "mib"),
    ("mem_used MiB", "mem_used_total", "mib"),
    ("compr MiB", "compr_data_size", "mib"),
    ("ratio", "compression_ratio", "{:.2f}"),
    ("req:wkr CPU", "request_cpu_share", "split"),
    ("swap out/in pg/s (CPUs busy)", "swap_out_pages_s", "swap"),
)


def _cell(med, key, fmt):
    v = med.get(key)
    if fmt == "swap":
        a, b, busy = med.get("swap_out_pages_s"), med.get("swap_in_pages_s"), med.get("swap_out_cpu_busy")
        if a is None or b is None:
            return ""
        return f"{a:.0f}/{b:.0f}" + (f" ({busy:.0%} busy)" if busy is not None else "")
    if v is None:
        return "-"
    if fmt == "mib":
        return f"{v / (1 << 20):.1f}"
    if fmt == "split":
        return f"{round(v * 100):d}:{100 - round(v * 100):d}"
    return fmt.format(v)


def table_rows(result):
    out = []
    for row in result["rows"]:
        if row["status"] != "ok":
            out.append([row["name"]] + [f"{row['status']}: {row['error']}"] + [""] * (len(COLUMNS) - 2))
            continue
        out.append([row["name"]] + [_cell(row["median"], key, fmt) for _, key, fmt in COLUMNS[1:]])
    return out


def format_table(result):
    headers = [c[0] for c in COLUMNS]
    rows = table_rows(result)
    ok_rows = [r for r in rows if len(r) == len(headers) and not r[1].startswith(("failed", "skipped"))]
    widths = [max([len(h)] + [len(r[i]) for r in ok_rows]) for i, h in enumerate(headers)]
    widths[0] = max([len(headers[0])] + [len(r[0]) for r in rows])
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for r in rows:
        if r in ok_rows:
            lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        else:
            lines.append(r[0].ljust(widths[0]) + "  " + r[1])
    return "\n".join(lines)


def format_ratios(result):
    lines = []
    for r in result["ratios"]:
        value = "-" if r["value"] is None else f"{r['value']:.2f}"
        spread = ""
        if len(r["per_round"]) > 1:
            spread = f"  (per round {min(r['per_round']):.2f}..{max(r['per_round']):.2f})"
        ceiling = "" if r.get("ceiling") is None else f"  [ceiling on {os.cpu_count()} CPUs: {r['ceiling']:.2f}]"
        lines.append(f"{r['status']:4s}  {value:>6s}  target {r['target']:7s}  {r['name']}{spread}{ceiling}")
    return "\n".join(lines)


def format_markdown(result, command):
    o, d, m = result["options"], result["dataset"], result["machine"]
    headers = [c[0] for c in COLUMNS]
    lines = [
        "# uzram bench",
        "",
        f"Command: `{command}`",
        "",
        f"Run {result['started']} ({result['duration_s']:.0f} s) on {m['cpus']} CPUs ({m['cpu_model']}), "
        f"kernel {m['kernel']}, {m['nbdkit']}. Data set: {d['size'] >> 20} MiB, mix {d['mix']} "
        f"(pages: {', '.join(f'{k} {v}' for k, v in d['pages'].items())}), seed {d['seed']}, "
        f"sha256 `{d['sha256'][:16]}`. Medians of {o['repeat']} interleaved round(s). "
        f"uzram {result['source']['git']} (sources {result['source']['digest_start']}).",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for r in table_rows(result):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    if result["source"]["changed_during_run"]:
        lines += ["", "**Warning: uzram's sources changed during this run** (digests "
                  f"{', '.join(result['source']['uzram_rows'])}): the uzram rows did not all run the same code."]
    lines += ["", "## Targets (ratios measured side by side in this run)", "",
              f"| target | ratio | goal | result | per round | ceiling on {m['cpus']} CPUs |",
              "|---|---:|---:|---|---:|---:|"]
    for r in result["ratios"]:
        value = "-" if r["value"] is None else f"{r['value']:.2f}"
        per_round = " ".join(f"{v:.2f}" for v in r["per_round"])
        ceiling = "" if r.get("ceiling") is None else f"{r['ceiling']:.2f}"
        lines.append(f"| {r['name']} | {value} | {r['target']} | {r['status']} | {per_round} | {ceiling} |")
    lines += ["", "Method:", ""]
    lines += [f"- {k}: {v}" for k, v in result["method"].items()]
    swap = result.get("swap")
    if swap is None:
        lines.append("- swap: not measured (run with --swap)")
    elif swap.get("status") != "ok":
        lines.append(f"- swap: {swap['status']}: {swap.get('error')}")
    else:
        lines.append(f"- swap: {swap['method']}; {swap['pages']} pages")
        lines += [f"  - {n}: failed: {v['error']}" for n, v in swap["rows"].items() if "error" in v]
    return "\n".join(lines) + "\n"


def write_report(result, outdir, command):
    """bench.json, report.md and the charts into ``outdir``; returns the paths written."""
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise BenchError(f"--out: cannot create {outdir}: {e.strerror}") from None
    from uzram.core.schema import BENCH
    result = {"version": BENCH, **result, "command": command}
    paths = []
    path = os.path.join(outdir, "bench.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    paths.append(path)
    path = os.path.join(outdir, "report.md")
    with open(path, "w") as f:
        f.write(format_markdown(result, command))
    paths.append(path)
    paths += write_charts(result, outdir)
    return paths


def readme_block(report_md):
    """report.md as a README section: the title dropped, headings moved under the README's."""
    lines = report_md.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#### " + l[3:] if l.startswith("## ") else l for l in lines).strip() + "\n"


def update_readme(path, section, report_md):
    """Replace the text between ``<!-- uzram-bench:SECTION begin -->`` and ``... end -->``
    in ``path`` with this run's report, so the README's figures come from a real run."""
    begin, end = f"<!-- uzram-bench:{section} begin -->", f"<!-- uzram-bench:{section} end -->"
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise BenchError(f"--readme: cannot read {path}: {e.strerror}") from None
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise BenchError(f"--readme: {path} has no '{begin}' ... '{end}' markers")
    text = text[:i + len(begin)] + "\n" + readme_block(report_md) + text[j:]
    with open(path, "w") as f:
        f.write(text)


def command_line(argv=None):
    """The command as typed, quoted for a shell."""
    argv = sys.argv[1:] if argv is None else argv
    return shlex.join(["uzram"] + list(argv))
