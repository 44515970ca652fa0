"""Message framing between the dispatcher and kcompressd workers.  No sockets here.

Page bytes never travel in messages: they are in shared memory (uzram.shm).  A JOB names
a range of slots of the pending ring and a window of the arena; the worker compresses the
slots straight into the window, back to back in slot order from its start, and its RESULT
says, for each slot, how long its blob is and what made it.

Every message is a list of ZeroMQ frames whose first frame is a fixed header:

    version u8 | command u8 | reserved u16 | count u32 | job u64      (little endian)

Commands and their further frames:

    READY      worker -> dispatcher   count = worker index, job = pid
    JOB        dispatcher -> worker   [params]: codec_id u8, level i16, first slot u32,
                                      window u64 (a byte offset in the arena), window bytes u32;
                                      count = pages (slots)
    RESULT     worker -> dispatcher   [table]: count lengths (u16 each), then count codec
                                      IDs (u8 each); a slot's blob starts where the one
                                      before it ends (the first at the window's start);
                                      length 0 with ID SKIPPED = a slot skipped because
                                      it was cancelled
    FAILED     worker -> dispatcher   [reason, UTF-8]
    HEARTBEAT  either way             (nothing)
    RECOMPRESS dispatcher -> worker   [params]: window u64, window bytes u32, threshold u16,
                                      auto u8, codecs u8, then 3 x (priority u8, codec_id u8,
                                      level i16); [count arena words of the blobs, u64 each]
                                      [count blob lengths, u16] [count stored codec IDs, u8]
                                      [count codec priorities, u8]; count = pages
    RECOMPRESSED worker -> dispatcher [count codec IDs] [count lengths, u16] [count offsets
                                      in the window, u32] [count outcomes, u8: the priority
                                      of the codec that made the new blob, 0 when none made
                                      it smaller, 255 when not tried]; length 0 = no new blob

A RECOMPRESS job reads each page's blob where it is in the arena (the store does not move
blobs while one is out, and installs a result only for pages that did not change).

A message's type comes from its command, never from its frame count.  ``decode`` checks
the framing (version, command, frame count, table sizes) and raises ProtocolError;
``result_arrays`` checks a RESULT against its job (lengths, codec IDs, the blobs' total
inside the job's window).  A RESULT carries no offsets, so its blobs are in order and
never overlap by construction, and the check is a few vectorized operations.  Callers
count and drop what fails.
"""

import struct

from uzram.core.constants import HUGE_THRESHOLD, PAGE_SIZE
from uzram.core.errors import ProtocolError

VERSION = 4
READY, JOB, RESULT, FAILED, HEARTBEAT, RECOMPRESS, RECOMPRESSED = 1, 2, 3, 4, 5, 6, 7
NAMES = {READY: "READY", JOB: "JOB", RESULT: "RESULT", FAILED: "FAILED", HEARTBEAT: "HEARTBEAT",
         RECOMPRESS: "RECOMPRESS", RECOMPRESSED: "RECOMPRESSED"}
HEADER = struct.Struct("<BBHIQ")
PARAMS = struct.Struct("<BhIQI")
RPARAMS = struct.Struct("<QIHBB" + "BBh" * 3)
MAX_CODECS = 3
SKIPPED = 255
MAX_PAGES = 1 << 16
_FRAMES = {READY: 1, JOB: 2, RESULT: 2, FAILED: 2, HEARTBEAT: 1, RECOMPRESS: 6, RECOMPRESSED: 5}
# RECOMPRESS's and RECOMPRESSED's frames after the header: bytes per page of each
_TABLES = {RESULT: (3,), RECOMPRESS: (8, 2, 1, 1), RECOMPRESSED: (1, 2, 4, 1)}


class Message:
    __slots__ = ("command", "count", "job", "frames")

    def __init__(self, command, count, job, frames):
        self.command = command
        self.count = count
        self.job = job
        self.frames = frames

    def __repr__(self):
        return f"Message({NAMES.get(self.command)}, count={self.count}, job={self.job})"


class JobParams:
    __slots__ = ("codec_id", "level", "slot", "window", "capacity")

    def __init__(self, codec_id, level, slot, window, capacity):
        self.codec_id = codec_id
        self.level = level
        self.slot = slot
        self.window = window
        self.capacity = capacity


def header(command, count=0, job=0):
    return HEADER.pack(VERSION, command, 0, count, job)


def ready(index, pid):
    return [header(READY, index, pid)]


def heartbeat():
    return [header(HEARTBEAT)]


def job(job_id, count, codec_id, level, slot, window, capacity):
    return [header(JOB, count, job_id), PARAMS.pack(codec_id, level or 0, slot, window, capacity)]


def result(job_id, ids, lens):
    """``ids`` bytes-like, ``lens`` a sequence of ints (or an array); the blobs lie back to
    back in the window, in slot order."""
    n = len(ids)
    return [header(RESULT, n, job_id), struct.pack(f"<{n}H", *lens) + bytes(ids)]


def recompress_job(job_id, window, capacity, threshold, auto, codecs, words, lens, ids, prios):
    """``codecs``: [(priority, codec ID, level)], at most three; ``words`` .. ``prios``:
    numpy arrays (or sequences) of the pages' blobs as they are stored."""
    n = len(lens)
    flat = []
    for prio, cid, level in list(codecs) + [(0, 0, 0)] * (MAX_CODECS - len(codecs)):
        flat += [prio, cid, level or 0]
    return [header(RECOMPRESS, n, job_id), RPARAMS.pack(window, capacity, threshold, int(auto), len(codecs), *flat),
            struct.pack(f"<{n}Q", *words), struct.pack(f"<{n}H", *lens), bytes(bytearray(ids)),
            bytes(bytearray(prios))]


def recompressed(job_id, ids, lens, offsets, prios):
    n = len(ids)
    return [header(RECOMPRESSED, n, job_id), bytes(ids), struct.pack(f"<{n}H", *lens),
            struct.pack(f"<{n}I", *offsets), bytes(prios)]


class RecompressParams:
    __slots__ = ("window", "capacity", "threshold", "auto", "codecs")

    def __init__(self, window, capacity, threshold, auto, ncodecs, *flat):
        self.window, self.capacity, self.threshold, self.auto = window, capacity, threshold, bool(auto)
        self.codecs = [tuple(flat[3 * i:3 * i + 3]) for i in range(ncodecs)]


def recompress_params(msg):
    """(params, words, lens, ids, prios) of a decoded RECOMPRESS; the tables as lists."""
    p = RecompressParams(*RPARAMS.unpack(bytes(msg.frames[1])))
    n = msg.count
    words = struct.unpack(f"<{n}Q", bytes(msg.frames[2]))
    lens = struct.unpack(f"<{n}H", bytes(msg.frames[3]))
    return p, words, lens, bytes(msg.frames[4]), bytes(msg.frames[5])


def failed(job_id, reason):
    return [header(FAILED, 0, job_id), str(reason).encode("utf-8", "replace")[:1024]]


def decode(frames):
    """Parse ``frames`` (bytes-like) into a Message; raise ProtocolError if malformed."""
    if not frames:
        raise ProtocolError("empty message")
    head = bytes(frames[0])
    if len(head) != HEADER.size:
        raise ProtocolError(f"header of {len(head)} bytes, expected {HEADER.size}")
    version, command, _, count, job_id = HEADER.unpack(head)
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}, expected {VERSION}")
    want = _FRAMES.get(command)
    if want is None:
        raise ProtocolError(f"unknown command {command}")
    if len(frames) != want:
        raise ProtocolError(f"{NAMES[command]} with {len(frames)} frames, expected {want}")
    if command == JOB:
        if len(frames[1]) != PARAMS.size:
            raise ProtocolError("JOB parameters of the wrong size")
        if count == 0 or count > MAX_PAGES:
            raise ProtocolError(f"JOB for {count} pages")
    elif command in _TABLES:
        name = NAMES[command]
        if count == 0 or count > MAX_PAGES:
            raise ProtocolError(f"{name} for {count} pages")
        tables = frames[2:] if command == RECOMPRESS else frames[1:]
        if any(len(t) != w * count for t, w in zip(tables, _TABLES[command])):
            raise ProtocolError(f"{name} tables do not match its page count")
        if command == RECOMPRESS:
            if len(frames[1]) != RPARAMS.size:
                raise ProtocolError("RECOMPRESS parameters of the wrong size")
            if RPARAMS.unpack(bytes(frames[1]))[4] > MAX_CODECS:
                raise ProtocolError("RECOMPRESS with more than three codecs")
    return Message(command, count, job_id, frames)


def window_end(offs, lens):
    """Bytes of the window that a checked RECOMPRESSED's blobs reach (skipped entries count
    not, whatever offset they carry)."""
    done = lens > 0
    return int((offs[done] + lens[done]).max()) if done.any() else 0


def peek_job(head, command=None):
    """The job ID in a message's first frame, if it is a header of this version (and of
    ``command``, when given); else None.  For answering a message that failed to decode."""
    head = bytes(head)
    if len(head) != HEADER.size:
        return None
    version, cmd, _, _, job_id = HEADER.unpack(head)
    if version != VERSION or (command is not None and cmd != command):
        return None
    return job_id


def job_params(msg):
    return JobParams(*PARAMS.unpack(bytes(msg.frames[1])))


_tables = {}


def _known_table(known_ids):
    import numpy as np
    table = _tables.get(known_ids)
    if table is None:
        table = np.zeros(256, dtype=bool)
        table[list(known_ids)] = True
        _tables[known_ids] = table
    return table


def recompressed_arrays(msg, count, capacity, old_lens, known_ids):
    """(codec IDs, lengths, offsets, outcomes) of a decoded RECOMPRESSED for a job of
    ``count`` pages whose blobs had ``old_lens`` (numpy), once checked: a new blob is
    1..3071 bytes, smaller than the old one, of a known codec (never raw), inside the
    window and overlapping no other; an entry without a new blob has length 0.  Raises
    ProtocolError."""
    import numpy as np
    if msg.count != count:
        raise ProtocolError(f"RECOMPRESSED for {msg.count} pages answers a job of {count}")
    ids = np.frombuffer(msg.frames[1], dtype=np.uint8)
    lens = np.frombuffer(msg.frames[2], dtype="<u2").astype(np.int64)
    offs = np.frombuffer(msg.frames[3], dtype="<u4").astype(np.int64)
    prios = np.frombuffer(msg.frames[4], dtype=np.uint8).copy()
    new = (prios > 0) & (prios <= MAX_CODECS)
    if ((~new) & (lens > 0)).any() or ((prios > MAX_CODECS) & (prios != SKIPPED)).any():
        raise ProtocolError("RECOMPRESSED with a blob for a page it did not recompress")
    if (new & ((lens == 0) | (lens >= old_lens) | (lens >= HUGE_THRESHOLD))).any():
        raise ProtocolError("RECOMPRESSED with an impossible page length")
    if not _known_table(tuple(known_ids))[ids[new]].all() or (ids[new] == 0).any():
        raise ProtocolError("RECOMPRESSED with an unknown codec ID")
    _check_window(offs[new], lens[new], capacity, "RECOMPRESSED")
    return ids, lens, offs, prios


def _check_window(o, n, capacity, name):
    if len(o):
        if int((o + n).max()) > capacity:
            raise ProtocolError(f"{name} points past its window of {capacity} bytes")
        if (o[1:] < o[:-1] + n[:-1]).any():
            raise ProtocolError(f"{name} blobs overlap or are out of order")


_limits = {}


def _length_limits(known_ids):
    """(lowest, highest) length a RESULT entry may have, by codec ID: 4096 for raw (ID
    0), 1..3071 for a known codec, 0 for SKIPPED, none for any other ID."""
    import numpy as np
    limits = _limits.get(known_ids)
    if limits is None:
        lo = np.ones(256, dtype=np.uint16)
        hi = np.zeros(256, dtype=np.uint16)
        for cid in known_ids:
            lo[cid], hi[cid] = (PAGE_SIZE, PAGE_SIZE) if cid == 0 else (1, HUGE_THRESHOLD - 1)
        lo[SKIPPED] = hi[SKIPPED] = 0
        limits = _limits[known_ids] = (lo, hi)
    return limits


def result_arrays(msg, count, capacity, known_ids):
    """(codec IDs, lengths, offsets in the window, bytes of the window used) of a decoded
    RESULT for a job of ``count`` pages and a window of ``capacity`` bytes, the first three
    as numpy arrays, once checked:

    - one entry per page of the job;
    - a length is 0 with ID SKIPPED (skipped), 4096 with codec ID 0 (raw), or 1..3071
      with a known ID;
    - the blobs, back to back from the window's start, end inside it.

    So whatever a worker answers, it can only point at bytes of its own window: a
    RESULT can make no page read another page's blob.  Raises ProtocolError."""
    import numpy as np
    if msg.count != count:
        raise ProtocolError(f"RESULT for {msg.count} pages answers a job of {count}")
    table = msg.frames[1]
    lens = np.frombuffer(table, dtype="<u2", count=count)
    ids = np.frombuffer(table, dtype=np.uint8, count=count, offset=2 * count)
    lo, hi = _length_limits(tuple(known_ids))
    if not ((lens >= lo[ids]) & (lens <= hi[ids])).all():
        raise ProtocolError(_bad_entry(ids, lens, known_ids))
    ends = np.cumsum(lens, dtype=np.int64)
    used = int(ends[-1])
    if used > capacity:
        raise ProtocolError(f"RESULT's blobs take {used} bytes, past its window of {capacity} bytes")
    return ids, lens, ends - lens, used


def _bad_entry(ids, lens, known_ids):
    """What is wrong with a RESULT whose table failed the check."""
    known = _known_table(tuple(known_ids))
    for i, (cid, n) in enumerate(zip(ids.tolist(), lens.tolist())):
        if cid == SKIPPED:
            if n:
                return f"RESULT entry {i} is skipped but has {n} bytes"
        elif not known[cid]:
            return f"RESULT with an unknown codec ID {cid}"
        elif n != PAGE_SIZE if cid == 0 else not 0 < n < HUGE_THRESHOLD:
            return f"RESULT with an impossible page length {n} for codec ID {cid}"
    return "RESULT with an impossible entry"
