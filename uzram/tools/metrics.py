"""uzram's statistics as OpenMetrics text (``uzram stats --prometheus``, ``uzram exporter``).

Every numeric Stats field becomes a family named ``uzram_`` + its name (zram's names where
zram has them: ``uzram_orig_data_size``, ``uzram_failed_writes``), labelled with the
device's ``device`` name and its ``runtime_dir`` (two devices may share a name).  Fields
that only grow are counters, whose samples carry OpenMetrics' ``_total`` suffix
(``uzram_failed_writes_total``); the rest are gauges.  The codec is a label of the info
family ``uzram_device`` (sample ``uzram_device_info``), and ``uzram_up`` is 1 for a device
that answered and 0 for one whose control socket is there but did not answer.  HELP is the
field's documentation from uzram/core/stats.py.

The text ends with ``# EOF``, as OpenMetrics requires; serve it as ``CONTENT_TYPE``.
"""

import dataclasses
import math

from uzram.core.stats import KEYS, Stats, describe

PREFIX = "uzram_"
CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

#: Fields that only grow while the device runs.
COUNTERS = frozenset((
    "pages_compacted", "huge_pages_since", "failed_reads", "failed_writes", "invalid_io", "notify_free",
    "reads", "writes", "bytes_read", "bytes_written", "batches_sent", "stale_results", "cancelled_pages",
    "resent_jobs", "worker_restarts", "bad_messages", "bad_results", "compressed_here", "writestall",
    "writer_pages", "request_cpu_seconds", "worker_cpu_seconds",
))

#: String fields: ``name`` is the device label, ``algorithm`` a label of uzram_device_info;
#: ``cpu_split`` is derived from the two CPU counters and left out.
_NOT_NUMERIC = frozenset(f.name for f in dataclasses.fields(Stats) if f.type is str) | {"cpu_split"}
NUMERIC = tuple(k for k in KEYS if k not in _NOT_NUMERIC)


def _escape(text):
    return str(text).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels):
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _value(v):
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _unit(name):
    for unit in ("bytes", "seconds"):
        if name.endswith("_" + unit):
            return unit
    return None


def device_labels(stats, runtime_dir):
    return {"device": stats.name if stats is not None and stats.name else "", "runtime_dir": runtime_dir}


def openmetrics(devices):
    """OpenMetrics text for ``devices``: ``[(labels, Stats or None), ...]`` (None: the device
    did not answer; it gets only ``uzram_up 0``)."""
    out = []

    def family(name, kind, help_text, samples, sample_suffix=""):
        out.append(f"# TYPE {name} {kind}")
        unit = _unit(name)
        if unit and kind != "info":
            out.append(f"# UNIT {name} {unit}")
        out.append(f"# HELP {name} {_escape(help_text)}")
        for labels, value in samples:
            out.append(f"{name}{sample_suffix}{_labels(labels)} {_value(value)}")

    family(PREFIX + "up", "gauge", "1 if the device's control socket answered, else 0.",
           [(labels, 0 if s is None else 1) for labels, s in devices])
    answered = [(labels, s) for labels, s in devices if s is not None]
    if answered:
        family(PREFIX + "device", "info", "The device: its codec for new pages.",
               [(dict(labels, algorithm=s.algorithm), 1) for labels, s in answered], "_info")
    for key in NUMERIC:
        kind = "counter" if key in COUNTERS else "gauge"
        if answered:
            family(PREFIX + key, kind, describe(key), [(labels, s[key]) for labels, s in answered],
                   "_total" if kind == "counter" else "")
    out.append("# EOF")
    return "\n".join(out) + "\n"
