"""The report's charts (matplotlib, when it is installed).
"""

import os

from .measure import serial_rows
from .rows import row_by_name


#: The chart's colour per kind of row, with the legend's words for it.
KIND_COLOURS = {
    "uzram": ("tab:blue", "uzram (this project)"),
    "nbdkit-memory": ("tab:orange", "nbdkit memory plugin (C)"),
    "bare": ("tab:green", "bare Python plugin (no compression)"),
    "kernel-zram": ("tab:gray", "kernel zram (dd, O_DIRECT)"),
}


def chart_label(row):
    """A row's name on a chart; kernel zram's says how it was measured (not through nbdcopy)."""
    return row["name"] + (" (dd/O_DIRECT)" if row["kind"] == "kernel-zram" else "")


def chart_caption(result):
    o, d = result["options"], result["dataset"]
    return (f"data set {d['size'] >> 20} MiB, mix {d['mix']}, seed {d['seed']}; medians of {o['repeat']} "
            f"interleaved round(s); {result['started'][:16].replace('T', ' ')} UTC, {result['machine']['cpus']} CPUs")


def write_charts(result, outdir):
    """write.png, serial.png, read_p50.png, memory.png; returns the paths written (none
    without matplotlib).  Each says its unit, which way is better, the data set, the rounds
    and the date; a legend names the colours; a row without the figure says n/a instead of
    showing a bar of zero."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return []
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    labels = [chart_label(r) for r in rows]
    caption = chart_caption(result)
    paths = []

    def legend(ax, kinds):
        ax.legend(handles=[Patch(color=KIND_COLOURS[k][0], label=KIND_COLOURS[k][1]) for k in KIND_COLOURS
                           if k in kinds], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    def save(fig, filename):
        fig.text(0.01, 0.005, caption, fontsize=7, color="0.3", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = os.path.join(outdir, filename)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    def bars(filename, key, unit, better, title, only=None, fmt="{:.0f}"):
        shown = [(r, lab) for r, lab in zip(rows, labels) if only is None or only(r)]
        if not shown:
            return
        fig, ax = plt.subplots(figsize=(11, 0.42 * max(len(shown), 2) + 1.6))
        values = [r["median"].get(key) for r, _ in shown]
        top = max([v for v in values if v is not None] or [1])
        for i, ((r, _), v) in enumerate(zip(shown, values)):
            if v is None:
                ax.text(0, i, " n/a", va="center", fontsize=8, color="0.4")
            else:
                ax.barh(i, v, color=KIND_COLOURS.get(r["kind"], ("tab:gray",))[0])
                ax.text(v, i, " " + fmt.format(v), va="center", fontsize=8)
        ax.set_yticks(range(len(shown)))
        ax.set_yticklabels([lab for _, lab in shown], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.18)
        ax.set_xlabel(f"{unit} ({better} is better)")
        ax.set_title(title, fontsize=10)
        legend(ax, {r["kind"] for r, _ in shown})
        save(fig, filename)

    bars("write.png", "write_mb_s", "MB/s, median", "higher",
         "Write: nbdcopy FILE into the device (kcompressd rows until every page is compressed)")
    bars("serial.png", "serial_mb_s", "MB/s, median", "higher",
         f"One writer, one 64 KiB request in flight, flush included ({result['options'].get('serial_size', 0) >> 20} MiB)",
         only=lambda r: r["name"] in {x.name for x in serial_rows([row_by_name(y["name"]) for y in rows])})
    bars("read_p50.png", "read4k_p50_us", "microseconds, median of each round's p50", "lower",
         "4 KiB random reads at queue depth 1: p50 latency", fmt="{:.1f}")

    fig, ax = plt.subplots(figsize=(11, 0.6 * max(len(rows), 2) + 1.6))
    keys = (("rss_growth", "memory growth (own RSS of server and workers + shared files)", "tab:purple"),
            ("mem_used_total", "mem_used_total (uzram, kernel zram)", "tab:cyan"),
            ("compr_data_size", "compr_data_size (uzram, kernel zram)", "tab:olive"))
    h = 0.27
    for j, (key, label, colour) in enumerate(keys):
        for i, r in enumerate(rows):
            v = r["median"].get(key)
            y = i + (j - 1) * h
            if v is None:
                ax.text(0, y, " n/a", va="center", fontsize=6, color="0.4")
            else:
                ax.barh(y, v / (1 << 20), height=h, color=colour, label=label if i == 0 or
                        all(x["median"].get(key) is None for x in rows[:i]) else None)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("MiB, median (lower is better)")
    ax.set_title(f"Memory held for the {result['dataset']['size'] >> 20} MiB data set", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save(fig, "memory.png")
    return paths
