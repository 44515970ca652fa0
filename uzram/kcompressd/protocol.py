"""Message framing between the dispatcher and kcompressd workers.  No sockets here.

Page bytes never travel in messages: they are in shared memory (uzram.shm).  A JOB names
a range of slots of the pending ring and a window of the arena; the worker compresses the
slots straight into the window, and its RESULT says, for each slot, what it wrote where.

Every message is a list of ZeroMQ frames whose first frame is a fixed header:

    version u8 | command u8 | reserved u16 | count u32 | job u64      (little endian)

Commands and their further frames:

    READY      worker -> dispatcher   count = worker index, job = pid
    JOB        dispatcher -> worker   [params]: codec_id u8, level i16, first slot u32,
                                      window u64 (a byte offset in the arena), window bytes u32;
                                      count = pages (slots)
    RESULT     worker -> dispatcher   [count codec IDs, u8 each] [count lengths, u16 each]
                                      [count offsets in the window, u32 each]; length 0 = a
                                      slot skipped because it was cancelled
    FAILED     worker -> dispatcher   [reason, UTF-8]
    HEARTBEAT  either way             (nothing)

A message's type comes from its command, never from its frame count.  ``decode`` checks
the framing (version, command, frame count, table sizes) and raises ProtocolError;
``result_arrays`` checks a RESULT against its job (lengths, codec IDs, every blob inside
the job's window, no two overlapping).  Callers count and drop what fails.
"""

import struct

from uzram.core.constants import HUGE_THRESHOLD, PAGE_SIZE
from uzram.core.errors import ProtocolError

VERSION = 2
READY, JOB, RESULT, FAILED, HEARTBEAT = 1, 2, 3, 4, 5
NAMES = {READY: "READY", JOB: "JOB", RESULT: "RESULT", FAILED: "FAILED", HEARTBEAT: "HEARTBEAT"}
HEADER = struct.Struct("<BBHIQ")
PARAMS = struct.Struct("<BhIQI")
MAX_PAGES = 1 << 16
_FRAMES = {READY: 1, JOB: 2, RESULT: 4, FAILED: 2, HEARTBEAT: 1}


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


def result(job_id, ids, lens, offsets):
    """``ids`` bytes-like, ``lens`` and ``offsets`` sequences of ints (or arrays)."""
    n = len(ids)
    return [header(RESULT, n, job_id), bytes(ids), struct.pack(f"<{n}H", *lens),
            struct.pack(f"<{n}I", *offsets)]


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
    elif command == RESULT:
        if count == 0 or count > MAX_PAGES:
            raise ProtocolError(f"RESULT for {count} pages")
        if len(frames[1]) != count or len(frames[2]) != 2 * count or len(frames[3]) != 4 * count:
            raise ProtocolError("RESULT tables do not match its page count")
    return Message(command, count, job_id, frames)


def window_end(offs, lens):
    """Bytes of the window that a checked RESULT's blobs reach (skipped entries count not,
    whatever offset they carry)."""
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


def result_arrays(msg, count, capacity, known_ids):
    """(codec IDs, lengths, offsets in the window) of a decoded RESULT for a job of
    ``count`` pages and a window of ``capacity`` bytes, as numpy arrays, once checked:

    - one entry per page of the job;
    - a length is 0 (skipped), 4096 with codec ID 0 (raw), or 1..3071 with a known ID;
    - every blob lies inside the window, in order, and no two overlap.

    So whatever a worker answers, it can only point at bytes of its own window: a
    RESULT can make no page read another page's blob.  Raises ProtocolError."""
    import numpy as np
    if msg.count != count:
        raise ProtocolError(f"RESULT for {msg.count} pages answers a job of {count}")
    ids = np.frombuffer(msg.frames[1], dtype=np.uint8)
    lens = np.frombuffer(msg.frames[2], dtype="<u2").astype(np.int64)
    offs = np.frombuffer(msg.frames[3], dtype="<u4").astype(np.int64)
    done = lens > 0
    raw = ids == 0
    if (done & raw & (lens != PAGE_SIZE)).any() or (done & ~raw & (lens >= HUGE_THRESHOLD)).any():
        raise ProtocolError("RESULT with an impossible page length")
    if not _known_table(tuple(known_ids))[ids[done]].all():
        raise ProtocolError("RESULT with an unknown codec ID")
    o, n = offs[done], lens[done]
    if len(o):
        if int((o + n).max()) > capacity:
            raise ProtocolError(f"RESULT points past its window of {capacity} bytes")
        if (o[1:] < o[:-1] + n[:-1]).any():
            raise ProtocolError("RESULT blobs overlap or are out of order")
    return ids, lens, offs
