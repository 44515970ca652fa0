"""Schema versions of uzram's machine-readable outputs (README: "JSON outputs").

Every JSON document uzram prints or writes carries ``"version"``: the version of that
document's layout.  A version goes up when a field is renamed, removed or changes its
meaning; new fields may appear without a new version, so readers ignore keys they do not
know.
"""

#: ``uzram stats --json``: the Stats mapping (uzram/core/stats.py) with ``version`` in front.
STATS = 1
#: ``uzram probe --json`` (uzram/tools/probe.py ProbeResult.to_dict).
PROBE = 1
#: ``uzram probe --compare-fio --json``.
PROBE_COMPARE = 1
#: ``uzram swap status --json``: ``{"version": 1, "devices": [...]}``.
SWAP_STATUS = 1
#: ``uzram ctl NAME --json``: ``{"version": 1, "name": ..., "attrs": {ATTR: value or null}}``.
ATTRS = 1
#: ``uzram list --json``: ``{"version": 1, "zramdevices": [{column: value}]}``.
LIST = 1
#: ``uzram bench``'s OUT/bench.json.
BENCH = 1


def versioned(version, document):
    """``document`` (a dict) with ``version`` as its first key."""
    return {"version": version, **{k: v for k, v in document.items() if k != "version"}}
