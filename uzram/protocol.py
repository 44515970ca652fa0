"""Message framing between the dispatcher and kcompressd workers.  No sockets here.

Every message is a list of ZeroMQ frames whose first frame is a fixed header:

    version u8 | command u8 | reserved u16 | count u32 | job u64      (little endian)

Commands and their further frames:

    READY      worker -> dispatcher   count = worker index, job = pid
    JOB        dispatcher -> worker   [params: codec_id u8, level i16] [count x 4096 raw bytes]
    RESULT     worker -> dispatcher   [count codec IDs, u8 each] [count lengths, u16 each] [blobs, back to back]
    FAILED     worker -> dispatcher   [reason, UTF-8]
    HEARTBEAT  either way             (nothing)

A message's type comes from its command, never from its frame count.  ``decode``
checks everything it can (version, command, frame count, sizes, codec IDs) and raises
ProtocolError otherwise: callers count and drop such messages.
"""

import struct

import numpy as np

from .constants import HUGE_THRESHOLD, PAGE_SIZE
from .errors import ProtocolError

VERSION = 1
READY, JOB, RESULT, FAILED, HEARTBEAT = 1, 2, 3, 4, 5
NAMES = {READY: "READY", JOB: "JOB", RESULT: "RESULT", FAILED: "FAILED", HEARTBEAT: "HEARTBEAT"}
HEADER = struct.Struct("<BBHIQ")
PARAMS = struct.Struct("<Bh")
MAX_PAGES = 1 << 16
_FRAMES = {READY: 1, JOB: 3, RESULT: 4, FAILED: 2, HEARTBEAT: 1}


class Message:
    __slots__ = ("command", "count", "job", "frames")

    def __init__(self, command, count, job, frames):
        self.command = command
        self.count = count
        self.job = job
        self.frames = frames

    def __repr__(self):
        return f"Message({NAMES.get(self.command)}, count={self.count}, job={self.job})"


def header(command, count=0, job=0):
    return HEADER.pack(VERSION, command, 0, count, job)


def ready(index, pid):
    return [header(READY, index, pid)]


def heartbeat():
    return [header(HEARTBEAT)]


def job(job_id, codec_id, level, raw):
    n = len(raw) // PAGE_SIZE
    return [header(JOB, n, job_id), PARAMS.pack(codec_id, level or 0), raw]


def result(job_id, ids, blobs):
    n = len(blobs)
    lengths = np.fromiter(map(len, blobs), dtype="<u2", count=n)
    return [header(RESULT, n, job_id), bytes(ids), lengths.tobytes(), b"".join(blobs)]


def failed(job_id, reason):
    return [header(FAILED, 0, job_id), str(reason).encode("utf-8", "replace")[:1024]]


def decode(frames, known_ids=None):
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
        if count == 0 or count > MAX_PAGES or len(frames[2]) != count * PAGE_SIZE:
            raise ProtocolError(f"JOB of {len(frames[2])} bytes for {count} pages")
    elif command == RESULT:
        _check_result(frames, count, known_ids)
    return Message(command, count, job_id, frames)


def _check_result(frames, count, known_ids):
    ids, lengths, blobs = frames[1], frames[2], frames[3]
    if count == 0 or count > MAX_PAGES:
        raise ProtocolError(f"RESULT for {count} pages")
    if len(ids) != count or len(lengths) != 2 * count:
        raise ProtocolError("RESULT tables do not match its page count")
    lens = np.frombuffer(lengths, dtype="<u2")
    raw = np.frombuffer(ids, dtype=np.uint8) == 0
    if int(lens.sum(dtype=np.int64)) != len(blobs):
        raise ProtocolError("RESULT lengths do not add up to its blob frame")
    if (lens == 0).any() or (raw & (lens != PAGE_SIZE)).any() or (~raw & (lens >= HUGE_THRESHOLD)).any():
        raise ProtocolError("RESULT with an impossible page length")
    if known_ids is not None:
        table = _known_table(tuple(known_ids))
        if not table[np.frombuffer(ids, dtype=np.uint8)].all():
            raise ProtocolError("RESULT with an unknown codec ID")


_tables = {}


def _known_table(known_ids):
    table = _tables.get(known_ids)
    if table is None:
        table = np.zeros(256, dtype=bool)
        table[list(known_ids)] = True
        _tables[known_ids] = table
    return table


def result_arrays(msg):
    """(codec IDs, lengths, packed blobs) of a decoded RESULT: numpy arrays and the frame
    itself, for installing the whole batch with one copy."""
    ids = np.frombuffer(msg.frames[1], dtype=np.uint8)
    lens = np.frombuffer(msg.frames[2], dtype="<u2").astype(np.int64)
    return ids, lens, msg.frames[3]


def job_params(msg):
    codec_id, level = PARAMS.unpack(bytes(msg.frames[1]))
    return codec_id, level
