"""``uzram bench``: the whole comparison in one run, written up as a report.

One data set (a page mix written to a file) is copied into every target with
``nbdcopy FILE URI``, read back with ``nbdcopy URI FILE2`` and compared; then 4 KiB random
reads at queue depth 1 time the read path.  The targets, side by side in the same run:

* uzram, per codec and mode: inline compression (``workers=0``) and kcompressd
  (``workers=1..N``);
* ``nbdkit memory`` (sparse array, no compression) and ``nbdkit memory allocator=zstd``;
* ``uzram/tools/bench/bare_plugin.py``: one bytearray in a Python plugin, the least a Python plugin
  can do (the baseline of uzram's speed targets);
* kernel zram (``/sys/class/zram-control``), written and read with ``dd`` and O_DIRECT.

The machine is shared and noisy, so each measurement is repeated with the rows
interleaved (round robin, the starting row rotated each round) and the report gives
medians and ratios measured in the same run, never absolute figures alone.

The modules, each importing only the groups before it (tests/unit/test_layers.py checks
it; bare_plugin is a script nbdkit loads and imports nothing of uzram):

    bench        common, bare_plugin -> dataset, rows, swap -> targets -> measure -> ratios,
                 charts -> report, run

- common: BenchError and the helpers every module uses;
- dataset: the page mix and the file written from it;
- rows: the rows by name;
- swap: swap-out and swap-in through a real swap area (root; ``--swap``, imported then);
- targets: the servers and devices the rows start, and their processes' memory;
- measure: one row's copy in and out, the read latency, the serialized writer, the swap runs;
- ratios: the targets uzram promises, as ratios of medians;
- charts, report: the PNGs, bench.json, report.md and the README section;
- run: the rounds.

This package re-exports what ``uzram bench`` (uzram/cli/bench.py) and the tests use.
numpy is required; matplotlib only for charts.
"""

from .common import BenchError
from .dataset import DEFAULT_MIX, format_mix, make_dataset, parse_mix
from .measure import DEFAULT_SERIAL_SIZE, run_swap
from .report import command_line, format_ratios, format_table, update_readme, write_report
from .rows import Row, parse_int_list, row_by_name, select_rows
from .run import (DEFAULT_LATENCY_COUNT, DEFAULT_REPEAT, DEFAULT_SIZE, QUICK_LATENCY_COUNT, QUICK_SIZE, BenchOptions,
                  Progress, run_bench)

__all__ = [
    "BenchError", "BenchOptions", "DEFAULT_LATENCY_COUNT", "DEFAULT_MIX", "DEFAULT_REPEAT", "DEFAULT_SERIAL_SIZE",
    "DEFAULT_SIZE", "Progress", "QUICK_LATENCY_COUNT", "QUICK_SIZE", "Row", "command_line", "format_mix",
    "format_ratios", "format_table", "make_dataset", "parse_int_list", "parse_mix", "row_by_name", "run_bench",
    "run_swap", "select_rows", "update_readme", "write_report",
]
