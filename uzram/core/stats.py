"""Statistics: a frozen, documented snapshot, with zram's names and order where zram has one.

A ``Stats`` is read both ways: as attributes (``s.orig_data_size``) and as a read-only
mapping of the same names (``s["orig_data_size"]``, ``s.keys()``, ``dict(s)``), whose keys
are the fields in order plus the derived ``compression_ratio`` and ``cpu_split``: the keys
of ``uzram stats --json``.
"""

import collections.abc
import dataclasses
import json
import os
import resource

MM_STAT = ("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max",
           "same_pages", "pages_compacted", "huge_pages", "huge_pages_since")
IO_STAT = ("failed_reads", "failed_writes", "invalid_io", "notify_free")


@dataclasses.dataclass(frozen=True)
class Stats(collections.abc.Mapping):
    # --- mm_stat, in zram's order ---
    orig_data_size: int = 0
    """Bytes of data stored, uncompressed (stored pages x 4096; same-filled pages included)."""
    compr_data_size: int = 0
    """Bytes of compressed data held (huge pages count 4096; same-filled pages count 0)."""
    mem_used_total: int = 0
    """Bytes of memory really held for the data: the touched part of the arena's segments
    (live blobs, dead bytes awaiting cleaning, page rounding) plus the pending area, and
    whatever a failed hole punch left allocated."""
    mem_limit: int = 0
    """The configured limit on mem_used_total (0 = none)."""
    mem_used_max: int = 0
    """Highest mem_used_total seen."""
    same_pages: int = 0
    """Pages stored as one repeated 8-byte value (zero pages included)."""
    pages_compacted: int = 0
    """Memory pages (4 KiB) given back to the kernel by cleaning (compaction), since start."""
    huge_pages: int = 0
    """Pages stored raw because they did not compress below 3/4 of a page."""
    huge_pages_since: int = 0
    """Huge pages stored since start."""
    # --- io_stat, in zram's order ---
    failed_reads: int = 0
    """Reads that failed (corrupt page, internal error)."""
    failed_writes: int = 0
    """Writes that failed (ENOSPC included)."""
    invalid_io: int = 0
    """Requests the device rejected as malformed (nbdkit already refuses requests outside the
    export before they reach uzram, so this counts only what gets past it)."""
    notify_free: int = 0
    """Pages freed by trim (discard) or write-zeroes."""
    # --- uzram's own ---
    name: str = ""
    """Device name (the plugin's ``name`` key)."""
    disksize: int = 0
    """Size of the device in bytes."""
    algorithm: str = ""
    """Codec for new pages (NAME or NAME:LEVEL)."""
    pages_stored: int = 0
    """Pages holding data (same-filled, compressed, huge and pending)."""
    compressed_pages: int = 0
    """Pages stored compressed in the arena."""
    arena_used_bytes: int = 0
    """Bytes of live compressed blobs in the arena (packed back to back, no per-page slack)."""
    arena_dead_bytes: int = 0
    """Bytes in arena segments left by overwritten, trimmed or stale pages, not yet cleaned."""
    arena_segments: int = 0
    """Arena segments mapped (1 MiB each; a segment is unmapped when its last live page goes)."""
    table_bytes: int = 0
    """Bytes of the page table (16 per page of the device; resident only where touched)."""
    reads: int = 0
    """Read requests served."""
    writes: int = 0
    """Write requests served."""
    bytes_read: int = 0
    """Bytes read by clients."""
    bytes_written: int = 0
    """Bytes written by clients."""
    connections: int = 0
    """NBD connections open now (reset, disksize= and backing_dev= need none, and keep new ones
    waiting while they run)."""
    thread_states: int = 0
    """Python thread states pinned now: one per open connection (uzram/nbd/threadstate.py)."""
    # --- post-processing (zram's bd_stat and more) ---
    bd_count: int = 0
    """Pages written back and held in the backing file now (bd_stat's bd_count, 4 KiB units)."""
    bd_reads: int = 0
    """Pages read from the backing file since start (bd_stat's bd_reads)."""
    bd_writes: int = 0
    """Pages written to the backing file since start (bd_stat's bd_writes)."""
    backing_dev: str = ""
    """The backing file or block device (empty: none)."""
    backing_blocks: int = 0
    """Pages the backing file can hold."""
    backing_allocated: int = 0
    """Bytes the backing file holds on disk (freed blocks are punched out)."""
    backing_punch_failures: int = 0
    """Freed blocks whose hole punch failed since the file was attached (they hold disk
    space, no data: the write, trim or zero that freed them went on)."""
    idle_pages: int = 0
    """Pages marked idle (by idle=) and not read or written since."""
    incompressible_pages: int = 0
    """Pages no secondary codec made smaller (zram's ZRAM_INCOMPRESSIBLE)."""
    num_recompressed: int = 0
    """Pages recompressed with a secondary codec since start."""
    recompressed_saved_bytes: int = 0
    """Bytes of compressed data recompression saved since start."""
    recomp_algorithm: str = ""
    """Secondary codecs, priority 1 first (comma separated)."""
    # --- kcompressd ---
    workers: int = 0
    """Configured kcompressd workers (0 = inline compression)."""
    workers_alive: int = 0
    """kcompressd workers running now."""
    pending_pages: int = 0
    """Pages queued for compression (readable from their pending copy)."""
    pending_bytes: int = 0
    """Bytes of the queued pages' copies (pending_pages x 4096)."""
    pending_held_bytes: int = 0
    """Memory the pending ring holds now (slots touched since it last gave its memory back,
    which it does when empty and idle for half a second)."""
    pending_slots_used: int = 0
    """Ring slots not yet reusable: queued pages, pages cancelled while queued, and gaps."""
    shared_bytes: int = 0
    """Memory held by the shared files (arena and pending ring), as the kernel counts it."""
    max_pending: int = 0
    """Limit on pending_bytes; beyond it writers compress inline."""
    shared_punch_failures: int = 0
    """Hole punches in the shared files that failed since start (logged, rate-limited): the
    memory stays held and counted (in shared_bytes and in mem_used_total) until it is written
    again or a later punch gives it back (the next free of the segment, compact, cleaning for
    mem_limit; the idle pending ring tries again after new writes); nothing relies on a
    punched range reading as zeros, and nothing stored is lost."""
    batches_queued: int = 0
    """Jobs waiting to be sent: to be sent again, or batch_pages of staged pages each."""
    batches_in_flight: int = 0
    """Jobs sent to a worker and not yet answered."""
    batches_sent: int = 0
    """Jobs sent to workers since start."""
    stale_results: int = 0
    """Compressed pages dropped because the page was written, zeroed or trimmed meanwhile."""
    cancelled_pages: int = 0
    """Queued pages never compressed because they were overwritten, zeroed or trimmed while
    queued: before their job was sent, or after (the worker skipped them)."""
    resent_jobs: int = 0
    """Batches sent again after their worker died or failed them."""
    worker_restarts: int = 0
    """Workers respawned after dying (a worker that never got to READY is no restart: see
    worker_start_failures)."""
    worker_start_failures: int = 0
    """Worker starts that never got to READY: the interpreter could not be run (a bad
    python=), or the worker exited or stayed silent first.  Each kind is logged once."""
    worker_error: str = ""
    """Why the last worker start failed (empty when none has)."""
    bad_messages: int = 0
    """Malformed messages from workers, counted and dropped."""
    bad_results: int = 0
    """Well-formed RESULTs whose spot-checked page did not decompress to the data sent (the job was sent again)."""
    recompress_jobs_sent: int = 0
    """Recompression jobs sent to kcompressd workers."""
    compressed_here: int = 0
    """Pages the dispatcher compressed itself: no worker alive, or a job that failed three more times."""
    writestall: int = 0
    """Write requests compressed inline because the pending memory was full or no worker ran."""
    writer_pages: int = 0
    """Pages that writers compressed themselves, not queued: a share of each write once the
    pending ring is more than half full, growing with the fill, and what a write could not
    queue (more than a quarter of the ring, or than its room).  Writestalls are not counted."""
    request_cpu_seconds: float = 0.0
    """CPU seconds used by the nbdkit process (request path, dispatcher, installs)."""
    worker_cpu_seconds: float = 0.0
    """CPU seconds used by kcompressd workers (alive and reaped)."""

    @property
    def compression_ratio(self):
        stored = self.orig_data_size - self.same_pages * 4096
        return stored / self.compr_data_size if self.compr_data_size else 0.0

    @property
    def cpu_split(self):
        """Request path : workers CPU, in percent ("78:22"); the seed's scan:compress split."""
        total = self.request_cpu_seconds + self.worker_cpu_seconds
        if not total:
            return "0:0"
        req = round(100 * self.request_cpu_seconds / total)
        return f"{req}:{100 - req}"

    # --- the mapping: the names of ``uzram stats --json``, in its order ---

    def __getitem__(self, key):
        if key in _FIELDS:
            return getattr(self, key)
        if key == "compression_ratio":
            return round(self.compression_ratio, 3)
        if key == "cpu_split":
            return self.cpu_split
        raise KeyError(key)

    def __iter__(self):
        return iter(KEYS)

    def __len__(self):
        return len(KEYS)

    def __contains__(self, key):
        return key in _KEY_SET

    def to_dict(self):
        return {k: self[k] for k in KEYS}

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def mm_stat(self):
        return " ".join(str(getattr(self, k)) for k in MM_STAT)

    def io_stat(self):
        return " ".join(str(getattr(self, k)) for k in IO_STAT)


#: Field names, then the derived ones: the keys of the mapping and of ``to_dict``.
_FIELDS = frozenset(f.name for f in dataclasses.fields(Stats))
KEYS = tuple(f.name for f in dataclasses.fields(Stats)) + ("compression_ratio", "cpu_split")
_KEY_SET = frozenset(KEYS)


def cpu_seconds(who):
    """User plus system CPU seconds of ``resource.RUSAGE_SELF`` or ``RUSAGE_CHILDREN``."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def process_cpu_seconds(pid):
    """User plus system CPU seconds of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def describe(field_name):
    """The docstring of a Stats field (read from the class source)."""
    return _DOCS.get(field_name, "")


def _field_docs():
    import ast
    import inspect
    import textwrap
    tree = ast.parse(textwrap.dedent(inspect.getsource(Stats)))
    docs, last = {}, None
    for node in tree.body[0].body:
        if isinstance(node, ast.AnnAssign):
            last = node.target.id
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and last:
            docs[last] = " ".join(node.value.value.split())
            last = None
    return docs


_DOCS = _field_docs()
_DOCS.update(
    compression_ratio="Stored bytes / compressed bytes (same-filled pages excluded).",
    cpu_split="Request path : kcompressd workers, percent of CPU seconds (the seed's scan:compress).",
)
