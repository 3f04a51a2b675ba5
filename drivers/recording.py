"""Recordings: one MCAP file per drive, readable by Foxglove and any MCAP / ROS 2 bag reader.

A recording is an MCAP file (profile ``ros2``) whose channels carry standard ROS 2 messages, CDR-encoded
(message encoding ``cdr``) with the full ``ros2msg`` schema embedded, in lz4-compressed chunks (zstd on
request: ``compression="zstd"``). The rig
YAML travels inside as an attachment named ``rig.yaml``; ground truth is a channel of its own.

Channels (every channel's metadata has ``sensor_id``; the reader maps channels to sensors by it, never by
topic name):

=====================  =====================================  ===============================================
our message            topic                                  ROS 2 type
=====================  =====================================  ===============================================
LidarSweep             ``/<sensor_id>/points``                sensor_msgs/msg/PointCloud2 (x y z intensity t
                                                              float32, ring uint16; ``t`` = time_offset [s])
CameraImage            ``/<sensor_id>/image/compressed``      sensor_msgs/msg/CompressedImage (JPEG), or
                       ``/<sensor_id>/image``                 sensor_msgs/msg/Image ``rgb8`` when
                                                              ``jpeg_quality=None`` (lossless)
  (each frame)         ``/<sensor_id>/camera_info``           sensor_msgs/msg/CameraInfo from the rig
RadarScan              ``/<sensor_id>/scan``                  radar_msgs/msg/RadarScan
ImuSample              ``/<sensor_id>/imu``                   sensor_msgs/msg/Imu
VehicleSpeed           ``/<sensor_id>/twist``                 geometry_msgs/msg/TwistStamped (linear.x)
AudioChunk             ``/<sensor_id>/audio``                 audio_common_msgs/msg/AudioDataStamped (F32LE
                                                              interleaved; channel metadata ``sample_rate``,
                                                              ``channels``, ``sample_format``)
  (once)               ``/<sensor_id>/audio_info``            audio_common_msgs/msg/AudioInfo
GroundTruthBoxes       ``/<sensor_id>`` (``/ground_truth``)   perception_msgs/msg/GroundTruthArray
  (once)               ``/tf_static``                         tf2_msgs/msg/TFMessage: ego_from_sensor of
                                                              every rig sensor (parent ``ego``)
=====================  =====================================  ===============================================

``/tf_static`` belongs to no sensor: its ``sensor_id`` metadata is ``""``. Ground truth must use a
sensor id that is not in the rig (``"ground_truth"``). Every message: header.stamp = ``stamp_ns``,
header.frame_id = ``sensor_id`` (ground truth: ``ego``), MCAP log_time = publish_time = ``stamp_ns``, MCAP
sequence = ``seq``. Field details are in ``drivers/ros_msgs.py``.

File layout, chosen for crash safety::

    magic, Header
    Attachment rig.yaml, Metadata "recording"      <- first, so a killed recording still has them
    { Schema, Channel records (outside chunks, written before the first chunk that uses them)
      Chunk (lz4 or zstd) + its MessageIndex records, flushed to the OS together }*
    DataEnd, summary (schemas, channels, statistics, chunk/attachment/metadata indexes), Footer, magic

A process killed mid-recording (SIGKILL) leaves every completed chunk on disk with the channel and
schema records it needs ahead of it; only the chunk being filled is lost. :class:`RecordingReader` uses
the summary when present and otherwise scans the data section chunk header by chunk header, delivers
everything up to the break, then raises :class:`RecordingError` naming the byte offset. Power loss is
not covered (the writer flushes to the OS, it does not fsync).

The MCAP container is written here rather than with ``mcap.writer.Writer`` because that writer puts
schema and channel records inside chunks (a killed file then has to be decompressed chunk by chunk, in
file order, just to learn its channels) and copies every record through BytesIO, and ``mcap_ros2``'s
writer registers channels without metadata; writing the few record types directly keeps the layout
above explicit. That record layer is :class:`McapRecordWriter` (schemas, channels with metadata, messages
with their own publish time, chunks, attachments, metadata, summary); :class:`RecordingWriter` turns typed
messages into its records, and other MCAP outputs in the same layout use it directly.
Files are checked in the tests with ``mcap``'s own reader + ``mcap_ros2``'s decoder and with ``rosbags``.
"""

from __future__ import annotations

import heapq
import logging
import os
import struct
import time
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import lz4.frame
import numpy as np
import zstandard

from calibration.rig import Rig, RigError
from drivers import ros_msgs
from drivers.messages import (
    AudioChunk,
    CameraImage,
    GroundTruthBoxes,
    ImuSample,
    LidarSweep,
    Message,
    RadarScan,
    VehicleSpeed,
)
from drivers.ros_msgs import CdrError

log = logging.getLogger(__name__)

MAGIC = b"\x89MCAP0\r\n"
PROFILE = "ros2"
LIBRARY = "perception-recording/1"
RIG_ATTACHMENT = "rig.yaml"
METADATA_NAME = "recording"
# Chunk compression. lz4 by default: on a frame's chunk (LiDAR sweep of 128k points, JPEGs, radar, IMU;
# 1.4 MB) it compresses in 3.8 ms and decompresses in 0.7 ms, against 6.1 ms and 2.6 ms for zstd level 1,
# for files about 30 % larger (ratio 0.66 against 0.51). Replay decompresses every frame on the frame's
# path, and a live recording compresses beside the pipeline on the same cores. zstd is for archives.
COMPRESSIONS = ("lz4", "zstd", "none")
COMPRESSION = "lz4"
ZSTD_LEVEL = 1  # measured: 2.6x faster than level 3 on point clouds, same ratio (0.72)

# MCAP opcodes
OP_HEADER, OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
OP_MESSAGE_INDEX, OP_CHUNK_INDEX, OP_ATTACHMENT, OP_ATTACHMENT_INDEX = 0x07, 0x08, 0x09, 0x0A
OP_STATISTICS, OP_METADATA, OP_METADATA_INDEX, OP_SUMMARY_OFFSET, OP_DATA_END = 0x0B, 0x0C, 0x0D, 0x0E, 0x0F
_OP_NAMES = {OP_HEADER: "Header", OP_FOOTER: "Footer", OP_SCHEMA: "Schema", OP_CHANNEL: "Channel",
             OP_MESSAGE: "Message", OP_CHUNK: "Chunk", OP_MESSAGE_INDEX: "MessageIndex",
             OP_CHUNK_INDEX: "ChunkIndex", OP_ATTACHMENT: "Attachment", OP_ATTACHMENT_INDEX: "AttachmentIndex",
             OP_STATISTICS: "Statistics", OP_METADATA: "Metadata", OP_METADATA_INDEX: "MetadataIndex",
             OP_SUMMARY_OFFSET: "SummaryOffset", OP_DATA_END: "DataEnd"}
_FOOTER_SIZE = 1 + 8 + 20  # opcode, length, summary_start, summary_offset_start, summary_crc

GROUND_TRUTH_ID = "ground_truth"
_MAX_STAMP_NS = (2**31) * 1_000_000_000  # header.stamp.sec is int32


class RecordingError(Exception):
    """A recording cannot be written or read; the message names the file, where (byte offset, record,
    message) and what broke."""


@dataclass(frozen=True)
class ChannelInfo:
    """One channel of a recording: ``message_count`` is None when the file does not say (unindexed
    chunks of an unclosed recording) and counting would need decompression; see
    :meth:`RecordingReader.summary` for exact counts. ``primary`` is True for the channel that carries the
    sensor's messages (False for companions such as camera_info, audio_info, tf_static)."""

    topic: str
    schema_name: str
    sensor_id: str
    message_count: int | None
    primary: bool = True


@dataclass(frozen=True)
class RecordingSummary:
    """What a recording holds.

    Args:
        path: the file.
        complete: True when the writer closed it (summary section present and valid).
        problem: why it is incomplete and where it breaks (byte offset), None when it reads to the end.
        start_ns, end_ns: first and last MCAP log time [ns] over all channels, None when empty.
        message_count: messages on all channels (auxiliary camera_info / audio_info / tf_static included).
        chunk_count: complete chunks.
        channels: every channel with its exact message count.
        counts_by_sensor: messages per sensor id on the sensor-message channels only (what
            :meth:`RecordingReader.messages` yields).
    """

    path: str
    complete: bool
    problem: str | None
    start_ns: int | None
    end_ns: int | None
    message_count: int
    chunk_count: int
    channels: tuple[ChannelInfo, ...]
    counts_by_sensor: dict[str, int] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        """end - start [s], 0 for an empty recording."""
        return 0.0 if self.start_ns is None else (self.end_ns - self.start_ns) * 1e-9


# ----------------------------------------------------------------------------------------------------------
# record serialisation helpers
def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def _map(d: dict[str, str]) -> bytes:
    body = b"".join(_str(k) + _str(v) for k, v in d.items())
    return struct.pack("<I", len(body)) + body


def _record(op: int, body: bytes) -> bytes:
    return struct.pack("<BQ", op, len(body)) + body


def check_string_map(data: dict[str, str] | None, what: str = "metadata") -> dict[str, str]:
    """A copy of ``data`` (None: empty) for an MCAP metadata record or channel metadata; ValueError naming
    the first key or value that is not a string."""
    out = dict(data or {})
    bad = [k for k, v in out.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ValueError(f"{what} must map strings to strings; {bad[0]!r} -> {out[bad[0]]!r} is not")
    return out


class _Cursor:
    """Sequential little-endian reads from a record body; raises CdrError when it runs out."""

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise CdrError(f"record ends after {len(self.data)} bytes, needed {self.pos + size}")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def bytes(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CdrError(f"record ends after {len(self.data)} bytes, needed {self.pos + n}")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def str(self) -> str:
        return self.bytes(self.take("<I")[0]).decode()

    def map(self) -> dict[str, str]:
        size = self.take("<I")[0]
        end = self.pos + size
        out = {}
        while self.pos < end:
            k = self.str()
            out[k] = self.str()
        return out


# ----------------------------------------------------------------------------------------------------------
# record layer
class McapRecordWriter:
    """The MCAP record layer: writes one chunked, compressed MCAP file in the crash-safe layout of the
    module docstring. :class:`RecordingWriter` writes recordings through it; any other MCAP output (already
    encoded messages, a publish time of their own) can too.

    Attachment, metadata, schema and channel records go straight to the file, outside chunks (a channel is
    therefore ahead of the chunk that holds its first message); messages go into the chunk in progress.
    A chunk is written with its message index records and flushed to the OS together when its uncompressed
    size reaches ``chunk_size`` and on :meth:`flush`; :meth:`finish` writes the last chunk and the summary
    (schemas, channels, statistics, chunk / attachment / metadata indexes, summary offsets, footer).

    Args:
        path: output file (created or truncated); the magic and Header record are written at once.
        library: the Header record's library string (who wrote the file).
        chunk_size: cut a chunk once its uncompressed size reaches this [bytes], >= 1.
        compression: chunk compression, one of :data:`COMPRESSIONS` (``"none"``: stored as is).
        compression_level: zstd level 1..22 (used with ``compression="zstd"`` only).
        profile: the Header record's profile.

    Raises ValueError for an out-of-range ``chunk_size``, ``compression`` or ``compression_level``; OSError
    (from the file) here and in every method when the file cannot be created or written. Not thread-safe.
    """

    def __init__(self, path: str | os.PathLike, library: str, chunk_size: int = 1 << 20,
                 compression: str = COMPRESSION, compression_level: int = ZSTD_LEVEL, profile: str = PROFILE) -> None:
        self.path = Path(path)
        if chunk_size < 1:
            raise ValueError(f"{self.path}: chunk_size must be positive, got {chunk_size}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"{self.path}: compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        if not 1 <= compression_level <= 22:
            raise ValueError(f"{self.path}: compression_level must be 1..22, got {compression_level}")
        self.chunk_size = int(chunk_size)
        self.compression = compression
        self._compression_name = "" if compression == "none" else compression  # the MCAP chunk header's name
        self._zstd = zstandard.ZstdCompressor(level=int(compression_level))
        self._schema_ids: dict[tuple[str, str, bytes], int] = {}
        self._channel_counts: dict[int, int] = {}  # channel id -> messages, in id order
        self._summary_schemas: list[bytes] = []
        self._summary_channels: list[bytes] = []
        self._chunk_indexes: list[bytes] = []
        self._attachment_indexes: list[bytes] = []
        self._metadata_indexes: list[bytes] = []
        self._message_count = 0
        self._start_ns: int | None = None
        self._end_ns = 0
        self._reset_chunk()
        self._f = open(self.path, "wb")
        self._pos = 0
        try:
            self._out(MAGIC + _record(OP_HEADER, _str(profile) + _str(library)))
        except BaseException:
            self._f.close()
            raise

    @property
    def closed(self) -> bool:
        """True after :meth:`finish` or :meth:`abandon`."""
        return self._f.closed

    def add_attachment(self, name: str, media_type: str, data: bytes) -> None:
        """An Attachment record (log and create time: the wall clock now [ns]) and its index entry."""
        offset = self._pos
        now = time.time_ns()  # the writer may read the wall clock: this is when the file was made
        body = struct.pack("<QQ", 0, now) + _str(name) + _str(media_type) + struct.pack("<Q", len(data)) + data
        rec = _record(OP_ATTACHMENT, body + struct.pack("<I", zlib.crc32(body)))
        self._out(rec)
        self._attachment_indexes.append(_record(
            OP_ATTACHMENT_INDEX, struct.pack("<QQQQQ", offset, len(rec), 0, now, len(data)) + _str(name)
            + _str(media_type)))

    def add_metadata(self, name: str, data: dict[str, str]) -> None:
        """A Metadata record ``name`` with the key/value strings ``data``, and its index entry (ValueError,
        nothing written, when a key or value is not a string)."""
        data = check_string_map(data, f"{self.path}: metadata '{name}'")
        offset = self._pos
        rec = _record(OP_METADATA, _str(name) + _map(data))
        self._out(rec)
        self._metadata_indexes.append(_record(OP_METADATA_INDEX, struct.pack("<QQ", offset, len(rec)) + _str(name)))

    def add_schema(self, name: str, encoding: str, data: bytes) -> int:
        """The id of the schema (name, encoding, data), writing its Schema record the first time."""
        key = (name, encoding, bytes(data))
        sid = self._schema_ids.get(key)
        if sid is None:
            sid = self._schema_ids[key] = len(self._schema_ids) + 1
            rec = _record(OP_SCHEMA, struct.pack("<H", sid) + _str(name) + _str(encoding)
                          + struct.pack("<I", len(data)) + bytes(data))
            self._summary_schemas.append(rec)
            self._out(rec)
        return sid

    def add_channel(self, topic: str, message_encoding: str, schema_id: int, metadata: dict[str, str]) -> int:
        """Write a new Channel record (``schema_id`` 0: no schema); returns its channel id (1, 2, ...)."""
        cid = len(self._channel_counts) + 1
        self._channel_counts[cid] = 0
        rec = _record(OP_CHANNEL, struct.pack("<HH", cid, schema_id) + _str(topic) + _str(message_encoding)
                      + _map(metadata))
        self._summary_channels.append(rec)
        self._out(rec)
        return cid

    def add_message(self, channel_id: int, log_time: int, publish_time: int, sequence: int,
                    data: bytes | bytearray | memoryview) -> None:
        """Append one Message record (times [ns], ``sequence`` uint32, ``data`` the encoded payload) to the
        chunk in progress; cuts the chunk when it reaches ``chunk_size``."""
        self._chunk_msg_index.setdefault(channel_id, []).append((log_time, len(self._chunk)))
        self._chunk += struct.pack("<BQHIQQ", OP_MESSAGE, 22 + len(data), channel_id, sequence, log_time,
                                   publish_time)
        self._chunk += data
        self._chunk_start = min(self._chunk_start, log_time)
        self._chunk_end = max(self._chunk_end, log_time)
        self._channel_counts[channel_id] += 1
        self._message_count += 1
        self._start_ns = log_time if self._start_ns is None else min(self._start_ns, log_time)
        self._end_ns = max(self._end_ns, log_time)
        if len(self._chunk) >= self.chunk_size:
            self._finish_chunk()

    def flush(self) -> None:
        """Write the chunk in progress (if any) and flush everything written to the OS."""
        self._finish_chunk()
        self._f.flush()

    def finish(self) -> None:
        """Write the last chunk and the summary section, and close the file (also when that fails).
        Idempotent."""
        if self._f.closed:
            return
        try:
            self._finish_chunk()
            self._write_summary()
        finally:
            self._f.close()

    def abandon(self) -> None:
        """Close the file as it is, without a summary (after a write error); readers recover it by scanning."""
        self._f.close()

    # ------------------------------------------------------------------ internals
    def _out(self, data: bytes) -> None:
        self._f.write(data)
        self._pos += len(data)

    def _reset_chunk(self) -> None:
        self._chunk = bytearray()
        self._chunk_msg_index: dict[int, list[tuple[int, int]]] = {}
        self._chunk_start = 2**64 - 1
        self._chunk_end = 0

    def _finish_chunk(self) -> None:
        """Compress the chunk in progress, write it with its message indexes in one go, flush to the OS."""
        if not self._chunk:
            return
        raw = self._chunk
        if self.compression == "lz4":
            compressed = lz4.frame.compress(raw)
        elif self.compression == "zstd":
            compressed = self._zstd.compress(raw)
        else:
            compressed = raw
        head = (struct.pack("<QQQI", self._chunk_start, self._chunk_end, len(raw), zlib.crc32(raw))
                + _str(self._compression_name)
                + struct.pack("<Q", len(compressed)))
        chunk_offset = self._pos
        chunk_length = 9 + len(head) + len(compressed)
        index_records, offsets = [], {}
        pos = chunk_offset + chunk_length
        for cid in sorted(self._chunk_msg_index):
            entries = np.array(self._chunk_msg_index[cid], dtype="<u8").tobytes()
            rec = _record(OP_MESSAGE_INDEX, struct.pack("<HI", cid, len(entries)) + entries)
            offsets[cid] = pos
            pos += len(rec)
            index_records.append(rec)
        index_bytes = b"".join(index_records)
        self._f.write(struct.pack("<BQ", OP_CHUNK, len(head) + len(compressed)) + head)
        self._f.write(compressed)
        self._f.write(index_bytes)
        self._pos += chunk_length + len(index_bytes)
        self._f.flush()
        offsets_map = b"".join(struct.pack("<HQ", cid, off) for cid, off in offsets.items())
        self._chunk_indexes.append(_record(
            OP_CHUNK_INDEX,
            struct.pack("<QQQQ", self._chunk_start, self._chunk_end, chunk_offset, chunk_length)
            + struct.pack("<I", len(offsets_map)) + offsets_map + struct.pack("<Q", len(index_bytes))
            + _str(self._compression_name) + struct.pack("<QQ", len(compressed), len(raw))))
        self._reset_chunk()

    def _write_summary(self) -> None:
        self._out(_record(OP_DATA_END, struct.pack("<I", 0)))
        summary_start = self._pos
        counts = b"".join(struct.pack("<HQ", cid, n) for cid, n in self._channel_counts.items())
        stats = _record(OP_STATISTICS, struct.pack(
            "<QHIIIIQQ", self._message_count, len(self._schema_ids), len(self._channel_counts),
            len(self._attachment_indexes), len(self._metadata_indexes), len(self._chunk_indexes),
            self._start_ns or 0, self._end_ns) + struct.pack("<I", len(counts)) + counts)
        groups = [(OP_SCHEMA, self._summary_schemas), (OP_CHANNEL, self._summary_channels),
                  (OP_STATISTICS, [stats]), (OP_CHUNK_INDEX, self._chunk_indexes),
                  (OP_ATTACHMENT_INDEX, self._attachment_indexes), (OP_METADATA_INDEX, self._metadata_indexes)]
        body, offsets = bytearray(), bytearray()
        for op, records in groups:
            if not records:
                continue
            start = summary_start + len(body)
            for r in records:
                body += r
            offsets += _record(OP_SUMMARY_OFFSET, struct.pack("<BQQ", op, start, summary_start + len(body) - start))
        summary_offset_start = summary_start + len(body)
        body += offsets
        footer_head = struct.pack("<BQQQ", OP_FOOTER, 20, summary_start, summary_offset_start)
        crc = zlib.crc32(footer_head, zlib.crc32(body))
        self._out(bytes(body) + footer_head + struct.pack("<I", crc) + MAGIC)
        self._f.flush()


# ----------------------------------------------------------------------------------------------------------
# writer
_KIND_OF_MESSAGE = {LidarSweep: "lidar", CameraImage: "camera", RadarScan: "radar", ImuSample: "imu",
                    AudioChunk: "microphone", VehicleSpeed: "vehicle_speed"}


class RecordingWriter:
    """Writes typed messages into one ``.mcap`` recording (see the module docstring for the layout).

    Args:
        path: output file (created or truncated).
        rig: the rig; stored as the ``rig.yaml`` attachment; every non-ground-truth message's sensor must be
            in it with the matching kind.
        metadata: free key/value strings (e.g. scenario, git revision), stored as the MCAP metadata
            record ``"recording"``.
        chunk_size: a chunk is compressed and flushed once its uncompressed size reaches this [bytes];
            smaller chunks lose less on a crash and compress a little worse.
        compression: chunk compression, ``"lz4"`` (default: fastest to write and to replay), ``"zstd"``
            (about a quarter smaller) or ``"none"``.
        compression_level: zstd level 1..22 (1: fastest; 19: about 25 % smaller than 1, for archives and
            shipped samples); used with ``compression="zstd"`` only.
        jpeg_quality: JPEG quality 1..100 for camera images; None stores them losslessly as
            sensor_msgs/Image rgb8.

    Use as a context manager; :meth:`close` (also on an exception in the ``with`` body) writes the summary.
    Not thread-safe: one writer thread per recording.
    """

    def __init__(self, path: str | os.PathLike, rig: Rig, metadata: dict[str, str] | None = None,
                 chunk_size: int = 1 << 20, jpeg_quality: int | None = 90, compression: str = COMPRESSION,
                 compression_level: int = ZSTD_LEVEL) -> None:
        self.path = Path(path)
        self.rig = rig
        if jpeg_quality is not None and not 1 <= int(jpeg_quality) <= 100:
            raise RecordingError(f"{self.path}: jpeg_quality must be 1..100 or None, got {jpeg_quality}")
        try:
            metadata = check_string_map(metadata, f"{self.path}: metadata")
        except ValueError as e:
            raise RecordingError(str(e)) from e
        self.jpeg_quality = jpeg_quality
        self.chunk_size = int(chunk_size)
        self._channels: dict[str, int] = {}  # topic -> channel id
        self._audio_format: dict[str, tuple[int, int]] = {}  # sensor_id -> (channels, sample_rate)
        self._tf_written = False
        self._closed = False
        try:
            self._mcap = McapRecordWriter(self.path, LIBRARY, self.chunk_size, compression, int(compression_level))
        except ValueError as e:  # chunk_size, compression or compression_level out of range
            raise RecordingError(str(e)) from e
        except OSError as e:
            raise RecordingError(f"cannot create recording {self.path}: {e.strerror}") from e
        try:
            self._mcap.add_attachment(RIG_ATTACHMENT, "application/yaml", rig.to_yaml().encode())
            self._mcap.add_metadata(METADATA_NAME, metadata)
            self._mcap.flush()
        except OSError as e:
            self._mcap.abandon()
            raise RecordingError(f"cannot write recording {self.path}: {e.strerror}") from e

    # ------------------------------------------------------------------ public
    def write(self, msg: Message) -> None:
        """Append one message (any type of ``drivers/messages.py``). Raises RecordingError when the
        sensor is not in the rig, its kind does not match, the payload is malformed, or the file cannot
        be written."""
        if self._closed:
            raise RecordingError(f"{self.path}: write() after close()")
        if type(msg) not in _KIND_OF_MESSAGE and not isinstance(msg, GroundTruthBoxes):
            raise RecordingError(f"{self.path}: cannot record a {type(msg).__name__}; expected a message type of "
                                 "drivers/messages.py")
        stamp, seq = msg.stamp_ns, msg.seq
        if not (isinstance(stamp, (int, np.integer)) and 0 <= stamp < _MAX_STAMP_NS):
            raise RecordingError(f"{self.path}: {type(msg).__name__} from '{msg.sensor_id}' seq {seq}: stamp_ns "
                                 f"{stamp!r} is not an integer in [0, 2^31 s)")
        if not (isinstance(seq, (int, np.integer)) and 0 <= seq < 2**32):
            raise RecordingError(f"{self.path}: {type(msg).__name__} from '{msg.sensor_id}': seq {seq!r} is not "
                                 "an integer in [0, 2^32)")
        try:
            parts = self._encode(msg)
            if not self._tf_written:
                self._tf_written = True
                ch = self._channel("/tf_static", "tf2_msgs/msg/TFMessage", "")
                parts.insert(0, (ch, ros_msgs.encode_tf_static(int(stamp), self.rig)))
        except (ValueError, TypeError) as e:
            raise RecordingError(f"{self.path}: cannot record {type(msg).__name__} from '{msg.sensor_id}' seq "
                                 f"{seq}: {e}") from e
        try:
            for cid, payload in parts:
                self._mcap.add_message(cid, int(stamp), int(stamp), int(seq), payload)
        except OSError as e:
            raise RecordingError(f"cannot write recording {self.path}: {e.strerror}") from e

    def close(self) -> None:
        """Write the last chunk and the summary, and close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._mcap.finish()
        except OSError as e:
            raise RecordingError(f"cannot finish recording {self.path}: {e.strerror}") from e

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ messages -> channels
    def _sensor_kind_check(self, msg: Message) -> None:
        kind = _KIND_OF_MESSAGE[type(msg)]
        if msg.sensor_id not in self.rig:
            raise ValueError(f"sensor '{msg.sensor_id}' is not in rig '{self.rig.name}' (has: "
                             f"{', '.join(self.rig.ids())})")
        have = self.rig[msg.sensor_id].kind
        if have != kind:
            raise ValueError(f"sensor '{msg.sensor_id}' is a {have} in the rig, not a {kind}")

    def _encode(self, msg: Message) -> list[tuple[int, bytes | bytearray]]:
        sid = msg.sensor_id
        if isinstance(msg, GroundTruthBoxes):
            if sid in self.rig:
                raise ValueError(f"ground truth needs a sensor id of its own (e.g. '{GROUND_TRUTH_ID}'), not the rig "
                                 f"sensor '{sid}'")
            return [(self._channel(f"/{sid}", "perception_msgs/msg/GroundTruthArray", sid),
                     ros_msgs.encode_ground_truth(msg))]
        self._sensor_kind_check(msg)
        if isinstance(msg, LidarSweep):
            return [(self._channel(f"/{sid}/points", "sensor_msgs/msg/PointCloud2", sid),
                     ros_msgs.encode_pointcloud2(msg))]
        if isinstance(msg, CameraImage):
            cam = self.rig[sid].camera
            shape = np.shape(msg.image)
            if shape[:2] != (cam.height, cam.width):
                raise ValueError(f"image is {shape[1] if len(shape) > 1 else '?'}x{shape[0]} but the rig's "
                                 f"intrinsics are {cam.width}x{cam.height}")
            if self.jpeg_quality is None:
                image = (self._channel(f"/{sid}/image", "sensor_msgs/msg/Image", sid), ros_msgs.encode_image(msg))
            else:
                image = (self._channel(f"/{sid}/image/compressed", "sensor_msgs/msg/CompressedImage", sid),
                         ros_msgs.encode_compressed_image(msg, self.jpeg_quality))
            info = (self._channel(f"/{sid}/camera_info", "sensor_msgs/msg/CameraInfo", sid),
                    ros_msgs.encode_camera_info(msg.stamp_ns, sid, cam))
            return [image, info]
        if isinstance(msg, RadarScan):
            return [(self._channel(f"/{sid}/scan", "radar_msgs/msg/RadarScan", sid), ros_msgs.encode_radar_scan(msg))]
        if isinstance(msg, ImuSample):
            return [(self._channel(f"/{sid}/imu", "sensor_msgs/msg/Imu", sid), ros_msgs.encode_imu(msg))]
        if isinstance(msg, VehicleSpeed):
            return [(self._channel(f"/{sid}/twist", "geometry_msgs/msg/TwistStamped", sid),
                     ros_msgs.encode_twist_stamped(msg))]
        # AudioChunk
        n_ch, rate = int(np.shape(msg.samples)[0]), int(msg.sample_rate)
        mics = self.rig[sid].mic_positions
        if n_ch != len(mics):
            raise ValueError(f"audio has {n_ch} channels but the rig lists {len(mics)} microphones")
        if not 0 < rate < 2**32:
            raise ValueError(f"sample_rate {rate} out of range")
        out = []
        fmt = self._audio_format.get(sid)
        if fmt is None:
            self._audio_format[sid] = (n_ch, rate)
            out.append((self._channel(f"/{sid}/audio_info", "audio_common_msgs/msg/AudioInfo", sid),
                        ros_msgs.encode_audio_info(n_ch, rate)))
        elif fmt != (n_ch, rate):
            raise ValueError(f"audio format changed from {fmt[0]} channels at {fmt[1]} Hz to {n_ch} at {rate} Hz "
                             "within one recording")
        meta = {"sample_rate": str(rate), "channels": str(n_ch), "sample_format": ros_msgs.AUDIO_SAMPLE_FORMAT}
        out.insert(0, (self._channel(f"/{sid}/audio", "audio_common_msgs/msg/AudioDataStamped", sid, meta),
                       ros_msgs.encode_audio(msg)))
        return out

    def _channel(self, topic: str, schema_name: str, sensor_id: str, extra: dict[str, str] | None = None) -> int:
        """The channel id for ``topic``; on first use its channel (and schema, if new) record is written
        straight to the file, ahead of the chunk in progress, which holds its first message."""
        cid = self._channels.get(topic)
        if cid is None:
            schema_id = self._mcap.add_schema(schema_name, "ros2msg", ros_msgs.SCHEMAS[schema_name].encode())
            cid = self._channels[topic] = self._mcap.add_channel(topic, "cdr", schema_id,
                                                                 {"sensor_id": sensor_id, **(extra or {})})
        return cid


# ----------------------------------------------------------------------------------------------------------
# reader
@dataclass
class _RChannel:
    id: int
    topic: str
    schema_name: str
    message_encoding: str
    metadata: dict[str, str]
    decode: Callable[[memoryview, int], Message] | None  # None: auxiliary channel (camera_info, tf, ...)

    @property
    def sensor_id(self) -> str:
        return self.metadata.get("sensor_id", "")


@dataclass
class _Chunk:
    offset: int  # of the Chunk record (its opcode byte)
    length: int  # of the whole record
    start: int
    end: int
    channel_ids: set[int] | None  # channels with messages in it (from the message index), None if unknown
    counts: dict[int, int] | None = None  # messages per channel id (scan of message indexes), None if unknown


def _decode_compressed_camera(data: memoryview, ch: _RChannel, seq: int, reduction: int = 1) -> CameraImage:
    stamp_ns, _, _, jpeg = ros_msgs.decode_compressed_image(data)
    # Left compressed (a copy: the chunk buffer is not ours to keep); decoded where the pixels are read.
    return CameraImage(ch.sensor_id, stamp_ns, seq, None, jpeg.tobytes(), reduction)


def _decode_raw_camera(data: memoryview, ch: _RChannel, seq: int) -> CameraImage:
    img = ros_msgs.decode_image(data)
    return CameraImage(ch.sensor_id, img.stamp_ns, seq, ros_msgs.rgb_from_image(img))


def _decode_audio(data: memoryview, ch: _RChannel, seq: int) -> AudioChunk:
    try:
        channels, rate = int(ch.metadata["channels"]), int(ch.metadata["sample_rate"])
        fmt = ch.metadata["sample_format"]
    except (KeyError, ValueError) as e:
        raise CdrError(f"audio channel {ch.topic} lacks valid channels/sample_rate/sample_format metadata") from e
    if fmt != ros_msgs.AUDIO_SAMPLE_FORMAT or channels < 1:
        raise CdrError(f"audio channel {ch.topic}: unsupported format {fmt!r} with {channels} channels")
    return ros_msgs.decode_audio(data, ch.sensor_id, seq, channels, rate)


# schema name -> decoder into our message; the one place that says which channels carry sensor messages.
_DECODERS: dict[str, Callable[[memoryview, _RChannel, int], Message]] = {
    "sensor_msgs/msg/PointCloud2": lambda d, ch, seq: ros_msgs.sweep_from_pointcloud2(
        ros_msgs.decode_pointcloud2(d), ch.sensor_id, seq, native=True),
    "sensor_msgs/msg/CompressedImage": _decode_compressed_camera,
    "sensor_msgs/msg/Image": _decode_raw_camera,
    "radar_msgs/msg/RadarScan": lambda d, ch, seq: ros_msgs.decode_radar_scan(d, ch.sensor_id, seq),
    "sensor_msgs/msg/Imu": lambda d, ch, seq: ros_msgs.decode_imu(d, ch.sensor_id, seq),
    "geometry_msgs/msg/TwistStamped": lambda d, ch, seq: ros_msgs.decode_twist_stamped(d, ch.sensor_id, seq),
    "audio_common_msgs/msg/AudioDataStamped": _decode_audio,
    "perception_msgs/msg/GroundTruthArray": lambda d, ch, seq: ros_msgs.decode_ground_truth(d, ch.sensor_id, seq),
}


class _ChunkError(Exception):
    """A chunk cannot be read; ``args[0]`` says which (byte offset) and why."""


class RecordingReader:
    """Reads a recording written by :class:`RecordingWriter` (or any MCAP file whose CDR channels carry
    ``sensor_id`` metadata).

    Args:
        path: the ``.mcap`` file.

    Attributes:
        rig: the rig from the ``rig.yaml`` attachment, None when the file has none.
        metadata: the key/value pairs of all MCAP metadata records, merged in file order.
        complete: True when the file was closed by its writer (summary present and intact).
        problem: where and why the data section breaks (truncation, corrupt record), None when it does not.

    Raises RecordingError on open for a missing, empty or non-MCAP file, or an invalid rig attachment.
    A file without a valid summary (writer killed) is indexed by scanning its chunk headers; reading it
    delivers every complete chunk, then raises RecordingError naming the byte offset of the break.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._f = open(self.path, "rb")
        except OSError as e:
            raise RecordingError(f"cannot open recording {self.path}: {e.strerror}") from e
        try:
            self._open()
        except BaseException:
            self._f.close()
            raise

    def _open(self) -> None:
        self._size = os.fstat(self._f.fileno()).st_size
        if self._size == 0:
            raise RecordingError(f"{self.path} is empty (0 bytes), not an MCAP recording")
        head = self._f.read(8)
        if head != MAGIC:
            raise RecordingError(f"{self.path} is not an MCAP recording: it starts with {head!r}, expected the MCAP "
                                 f"magic {MAGIC!r}")
        self._channels: dict[int, _RChannel] = {}
        self._schemas: dict[int, tuple[str, str]] = {}  # id -> (name, encoding)
        self._chunks: list[_Chunk] = []
        self._stats_counts: dict[int, int] | None = None
        self._stats_times: tuple[int, int] | None = None
        self.metadata: dict[str, str] = {}
        self._attachments: dict[str, bytes] = {}
        self.problem: str | None = None
        op, length = self._record_head(8)
        if op != OP_HEADER:
            raise RecordingError(f"{self.path}: the record at byte offset 8 is a {_OP_NAMES.get(op, hex(op))}, "
                                 "expected the MCAP Header")
        self._data_start = 8 + 9 + length
        self.complete = self._read_summary()
        if not self.complete:
            self._scan()
        self.rig: Rig | None = None
        if RIG_ATTACHMENT in self._attachments:
            try:
                self.rig = Rig.from_yaml(self._attachments[RIG_ATTACHMENT].decode(),
                                         f"{self.path} (attachment {RIG_ATTACHMENT})")
            except (RigError, UnicodeDecodeError) as e:
                raise RecordingError(f"{self.path}: invalid {RIG_ATTACHMENT} attachment: {e}") from e

    # ------------------------------------------------------------------ public
    def attachment(self, name: str) -> bytes | None:
        """The bytes of the attachment ``name`` (e.g. ``rig.yaml``) as stored, or None."""
        return self._attachments.get(name)

    def channels(self) -> list[ChannelInfo]:
        """Every channel, by channel id; counts from the summary or message indexes (None if unknown)."""
        counts = self._cheap_counts()
        return [ChannelInfo(ch.topic, ch.schema_name, ch.sensor_id, None if counts is None else counts.get(cid, 0),
                            primary=ch.decode is not None and bool(ch.sensor_id))
                for cid, ch in sorted(self._channels.items())]

    def messages(self, sensors: Collection[str] | None = None, start_ns: int | None = None,
                 end_ns: int | None = None, image_reduction: int = 1) -> Iterator[Message]:
        """Typed messages in log-time order (ties in write order).

        Args:
            sensors: sensor ids to read (default all, ground truth included); an id that is neither in the
                rig nor on any channel raises RecordingError.
            start_ns, end_ns: half-open log-time window [start_ns, end_ns) [ns]; None = unbounded.
            image_reduction: 1, 2, 4 or 8: compressed camera images are decoded at 1/image_reduction of
                their size (each side rounded up), by the codec itself, for a consumer that would shrink
                them anyway (the detection pipeline's cameras run at half size). Raw images are left alone.

        Compressed camera images are yielded undecoded: :attr:`CameraImage.image` decodes them on first
        read and raises :class:`~drivers.messages.ImageDecodeError` there if the bytes are not an image.
        Yields every message up to a break (truncation, corruption), then raises RecordingError saying
        where it broke and how many messages were delivered.
        """
        if image_reduction not in (1, 2, 4, 8):
            raise ValueError(f"image_reduction must be 1, 2, 4 or 8, got {image_reduction!r}")
        wanted = self._wanted(sensors)
        delivered = 0
        for ch, log_time, seq, data, chunk_offset in self._merged(wanted, start_ns, end_ns, lambda: delivered):
            try:
                if image_reduction != 1 and ch.decode is _decode_compressed_camera:
                    msg = _decode_compressed_camera(data, ch, seq, image_reduction)
                else:
                    msg = ch.decode(data, ch, seq)
            except (CdrError, ValueError, struct.error) as e:
                raise RecordingError(
                    f"{self.path}: cannot decode message seq {seq} on {ch.topic} (log time {log_time}) in the "
                    f"chunk at byte offset {chunk_offset}: {e}; {delivered} messages were delivered before it") from e
            delivered += 1
            yield msg
        self._raise_break(delivered)

    def stamps(self) -> Iterator[tuple[str, int, int]]:
        """(sensor_id, stamp_ns from the CDR header, log_time_ns) for every sensor message, in log-time
        order, without decoding payloads. Raises RecordingError at a break like :meth:`messages`."""
        wanted = self._wanted(None)
        delivered = 0
        for ch, log_time, seq, data, chunk_offset in self._merged(wanted, None, None, lambda: delivered):
            try:
                stamp = ros_msgs.header_stamp_ns(data)
            except CdrError as e:
                raise RecordingError(f"{self.path}: message seq {seq} on {ch.topic} in the chunk at byte offset "
                                     f"{chunk_offset}: {e}") from e
            delivered += 1
            yield ch.sensor_id, stamp, log_time
        self._raise_break(delivered)

    def summary(self) -> RecordingSummary:
        """Per-channel counts and time span: from the summary section when the file is complete, else
        from message indexes and chunk headers (decompressing chunks that have no message index)."""
        counts = self._cheap_counts()
        if counts is None:
            counts = {}
            for c in self._chunks:
                chunk_counts = c.counts
                if chunk_counts is None:
                    chunk_counts = {}
                    try:
                        for _, _, _, cid, _, _ in self._chunk_messages(c, None, None, None):
                            chunk_counts[cid] = chunk_counts.get(cid, 0) + 1
                    except _ChunkError as e:
                        raise RecordingError(f"{self.path}: {e.args[0]}") from e
                for cid, n in chunk_counts.items():
                    counts[cid] = counts.get(cid, 0) + n
        if self._stats_times is not None and sum(counts.values()):
            start, end = self._stats_times
        elif self._chunks:
            start, end = min(c.start for c in self._chunks), max(c.end for c in self._chunks)
        else:
            start = end = None
        infos = tuple(ChannelInfo(ch.topic, ch.schema_name, ch.sensor_id, counts.get(cid, 0))
                      for cid, ch in sorted(self._channels.items()))
        by_sensor: dict[str, int] = {}
        for cid, ch in sorted(self._channels.items()):
            if ch.decode is not None and ch.sensor_id:
                by_sensor[ch.sensor_id] = by_sensor.get(ch.sensor_id, 0) + counts.get(cid, 0)
        return RecordingSummary(str(self.path), self.complete, self.problem, start, end, sum(counts.values()),
                                len(self._chunks), infos, by_sensor)

    def close(self) -> None:
        """Close the file; iterators already running stop working."""
        self._f.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ reading helpers
    def _wanted(self, sensors: Collection[str] | None) -> set[int]:
        readable = {cid: ch for cid, ch in self._channels.items() if ch.decode is not None and ch.sensor_id}
        if sensors is None:
            return set(readable)
        if isinstance(sensors, str):
            sensors = [sensors]
        known = {ch.sensor_id for ch in readable.values()} | set(self.rig.ids() if self.rig else ())
        unknown = sorted(set(sensors) - known)
        if unknown:
            raise RecordingError(f"{self.path}: no sensor '{unknown[0]}' in this recording (has: "
                                 f"{', '.join(sorted(known))})")
        return {cid for cid, ch in readable.items() if ch.sensor_id in sensors}

    def _raise_break(self, delivered: int) -> None:
        if self.problem is not None:
            raise RecordingError(f"{self.path}: {self.problem}; {delivered} messages were delivered before the break")

    def _merged(self, wanted: set[int], start: int | None, end: int | None, delivered: Callable[[], int]):
        """(channel, log_time, seq, payload, chunk offset) in log-time order: chunks are opened in order of
        their first log time and merged through a heap, so a chunk is decompressed only when its messages
        are due and everything before a bad chunk is delivered before it raises."""
        chunks = [c for c in self._chunks
                  if (c.channel_ids is None or not c.channel_ids.isdisjoint(wanted))
                  and (start is None or c.end >= start) and (end is None or c.start < end)]
        chunks.sort(key=lambda c: (c.start, c.offset))
        heap: list[tuple] = []
        i = 0
        while True:
            while i < len(chunks) and (not heap or chunks[i].start <= heap[0][0]):
                try:
                    for item in self._chunk_messages(chunks[i], wanted, start, end):
                        heapq.heappush(heap, item)
                except _ChunkError as e:
                    raise RecordingError(f"{self.path}: {e.args[0]}; {delivered()} messages were delivered "
                                         "before it") from e
                i += 1
            if not heap:
                return
            log_time, chunk_offset, _, cid, seq, data = heapq.heappop(heap)
            yield self._channels[cid], log_time, seq, data, chunk_offset

    def _chunk_messages(self, c: _Chunk, wanted: set[int] | None, start: int | None, end: int | None) -> list[tuple]:
        """Decompress and CRC-check one chunk; its messages as (log_time, chunk offset, record offset,
        channel id, seq, payload view). Raises _ChunkError."""
        where = f"chunk at byte offset {c.offset}"
        self._f.seek(c.offset)
        rec = self._f.read(c.length)
        if len(rec) < c.length:
            raise _ChunkError(f"{where} is truncated: the file ends at byte {c.offset + len(rec)}, the chunk at "
                              f"{c.offset + c.length}")
        try:
            cur = _Cursor(rec, 9)
            _, _, usize, crc = cur.take("<QQQI")
            compression = cur.str()
            csize = cur.take("<Q")[0]
            payload = memoryview(rec)[cur.pos:cur.pos + csize]
            if cur.pos + csize > len(rec):
                raise CdrError(f"compressed size {csize} runs past the record end")
        except (CdrError, UnicodeDecodeError) as e:
            raise _ChunkError(f"{where}: corrupt chunk header: {e}") from e
        try:
            if compression == "zstd":
                raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=usize)
            elif compression == "":
                raw = bytes(payload)
            elif compression == "lz4":
                raw = lz4.frame.decompress(payload)
            else:
                raise _ChunkError(f"{where}: unsupported compression {compression!r}")
        except (zstandard.ZstdError, RuntimeError) as e:
            raise _ChunkError(f"{where}: {compression} decompression failed (corrupt data): {e}") from e
        if len(raw) != usize:
            raise _ChunkError(f"{where}: decompressed to {len(raw)} bytes, the header says {usize} (corrupt data)")
        if crc:
            actual = zlib.crc32(raw)
            if actual != crc:
                raise _ChunkError(f"{where}: CRC mismatch (stored 0x{crc:08x}, computed 0x{actual:08x}): the chunk's "
                                  "data is corrupt")
        out = []
        mv = memoryview(raw)
        pos = 0
        while pos < len(raw):
            if pos + 9 > len(raw):
                raise _ChunkError(f"{where}: record header at chunk offset {pos} runs past the chunk end")
            op, length = struct.unpack_from("<BQ", raw, pos)
            body = pos + 9
            if body + length > len(raw):
                raise _ChunkError(f"{where}: {_OP_NAMES.get(op, hex(op))} record at chunk offset {pos} runs past the "
                                  "chunk end")
            if op == OP_MESSAGE:
                if length < 22:
                    raise _ChunkError(f"{where}: Message record at chunk offset {pos} is too short ({length} bytes)")
                cid, seq, log_time = struct.unpack_from("<HIQ", raw, body)
                if ((wanted is None or cid in wanted) and (start is None or log_time >= start)
                        and (end is None or log_time < end)):
                    out.append((log_time, c.offset, pos, cid, seq, mv[body + 22:body + length]))
            elif op in (OP_SCHEMA, OP_CHANNEL):  # other writers put these inside chunks
                self._parse_record(op, mv[body:body + length], f"{where}, chunk offset {pos}")
            pos = body + length
        return out

    # ------------------------------------------------------------------ index: summary or scan
    def _record_head(self, offset: int) -> tuple[int, int]:
        self._f.seek(offset)
        b = self._f.read(9)
        if len(b) < 9:
            raise RecordingError(f"{self.path}: truncated at byte offset {offset}: no complete record header")
        return struct.unpack("<BQ", b)

    def _read_summary(self) -> bool:
        """Index from the summary section; False (and a log line) when there is none or it is damaged."""
        if self._size < self._data_start + _FOOTER_SIZE + 8:
            return False
        self._f.seek(self._size - _FOOTER_SIZE - 8)
        tail = self._f.read(_FOOTER_SIZE + 8)
        if tail[-8:] != MAGIC or tail[0] != OP_FOOTER or struct.unpack_from("<Q", tail, 1)[0] != 20:
            return False
        summary_start, summary_offset_start, crc = struct.unpack_from("<QQI", tail, 9)
        footer_offset = self._size - _FOOTER_SIZE - 8
        if not summary_start or not self._data_start <= summary_start <= footer_offset:
            if summary_start:
                log.warning("%s: footer points at an invalid summary (byte %d); scanning the file", self.path,
                            summary_start)
            return False
        self._f.seek(summary_start)
        body = self._f.read(footer_offset - summary_start)
        if crc and zlib.crc32(tail[:1 + 8 + 16], zlib.crc32(body)) != crc:
            log.warning("%s: summary section CRC mismatch; scanning the file instead", self.path)
            return False
        try:
            pos = 0
            while pos < len(body):
                op, length = struct.unpack_from("<BQ", body, pos)
                rec = memoryview(body)[pos + 9:pos + 9 + length]
                if len(rec) < length:
                    raise CdrError(f"record at byte offset {summary_start + pos} runs past the summary")
                self._parse_record(op, rec, f"summary record at byte offset {summary_start + pos}")
                pos += 9 + length
        except (CdrError, struct.error, UnicodeDecodeError) as e:
            log.warning("%s: unreadable summary (%s); scanning the file instead", self.path, e)
            self._reset_index()
            return False
        if not self._channels and self._chunks:
            self._reset_index()
            return False  # summary without channel records: the data section has them
        return True

    def _reset_index(self) -> None:
        self._channels.clear()
        self._schemas.clear()
        self._chunks.clear()
        self._attachments.clear()
        self.metadata.clear()
        self._stats_counts = self._stats_times = None

    def _scan(self) -> None:
        """Index the data section by walking its records (chunk headers only, no decompression); stop at
        the first truncated or invalid record and remember where (``problem``)."""
        self.problem = self._scan_records()
        if self.problem is not None and self._chunks:
            # the last chunk's message indexes may be cut short: do not trust them to filter or count
            self._chunks[-1].counts = self._chunks[-1].channel_ids = None

    def _scan_records(self) -> str | None:
        pos = self._data_start
        last: _Chunk | None = None
        while True:
            if pos == self._size:
                return (f"the file ends at byte offset {pos} without a summary or footer (the writer did not "
                        "close it: killed or crashed)")
            if pos + 9 > self._size:
                return f"truncated at byte offset {pos}: {self._size - pos} trailing bytes are not a complete record"
            op, length = self._record_head(pos)
            name = _OP_NAMES.get(op)
            if name is None or op == OP_HEADER:
                return f"corrupt data at byte offset {pos}: invalid record opcode 0x{op:02x}"
            end = pos + 9 + length
            if end > self._size:
                return (f"truncated at byte offset {pos}: the {name} record there declares {length} bytes but the "
                        f"file ends at byte {self._size}")
            if op in (OP_DATA_END, OP_FOOTER):
                log.warning("%s: summary section missing or damaged; data section read by scanning", self.path)
                return None
            if op == OP_CHUNK:
                if length < 40:
                    return f"corrupt data at byte offset {pos}: Chunk record of only {length} bytes"
                start, stop = struct.unpack("<QQ", self._f.read(16))
                last = _Chunk(pos, 9 + length, start, stop, None)
                self._chunks.append(last)
            elif op == OP_MESSAGE_INDEX:
                rec = self._f.read(length)
                if last is not None and len(rec) >= 6:
                    cid, nbytes = struct.unpack_from("<HI", rec)
                    last.counts = last.counts or {}
                    last.counts[cid] = nbytes // 16
                    last.channel_ids = set(last.counts)
            elif op == OP_MESSAGE:
                return (f"unsupported layout at byte offset {pos}: a Message record outside a chunk (only chunked "
                        "MCAP files are read)")
            elif op in (OP_SCHEMA, OP_CHANNEL, OP_ATTACHMENT, OP_METADATA):
                try:
                    self._parse_record(op, memoryview(self._f.read(length)), f"{name} record at byte offset {pos}")
                except (CdrError, struct.error, UnicodeDecodeError) as e:
                    return f"corrupt {name} record at byte offset {pos}: {e}"
            pos = end

    def _parse_record(self, op: int, rec: memoryview, where: str) -> None:
        """Register one index-relevant record (schema, channel, chunk index, statistics, attachment,
        metadata, and their indexes); others are ignored."""
        cur = _Cursor(rec)
        if op == OP_SCHEMA:
            sid = cur.take("<H")[0]
            self._schemas[sid] = (cur.str(), cur.str())
        elif op == OP_CHANNEL:
            cid, schema_id = cur.take("<HH")
            topic, encoding, meta = cur.str(), cur.str(), cur.map()
            schema_name, schema_encoding = self._schemas.get(schema_id, ("", ""))
            decode = _DECODERS.get(schema_name) if encoding == "cdr" and schema_encoding == "ros2msg" else None
            self._channels[cid] = _RChannel(cid, topic, schema_name, encoding, meta, decode)
        elif op == OP_CHUNK_INDEX:
            start, stop, offset, length = cur.take("<QQQQ")
            n = cur.take("<I")[0] // 10
            ids = {cur.take("<HQ")[0] for _ in range(n)}
            self._chunks.append(_Chunk(offset, length, start, stop, ids or None))
        elif op == OP_STATISTICS:
            values = cur.take("<QHIIIIQQ")
            n = cur.take("<I")[0] // 10
            self._stats_counts = dict(cur.take("<HQ") for _ in range(n))
            self._stats_times = (values[6], values[7])
        elif op == OP_ATTACHMENT_INDEX:
            offset, length = cur.take("<QQ")
            self._f.seek(offset)
            rec2 = self._f.read(length)
            if len(rec2) < length or rec2[0] != OP_ATTACHMENT:
                raise CdrError(f"attachment index points at byte offset {offset}, which holds no attachment")
            self._parse_record(OP_ATTACHMENT, memoryview(rec2)[9:], f"Attachment record at byte offset {offset}")
        elif op == OP_ATTACHMENT:
            cur.take("<QQ")
            name, _ = cur.str(), cur.str()
            data = cur.bytes(cur.take("<Q")[0])
            crc = cur.take("<I")[0]
            if crc and zlib.crc32(rec[:cur.pos - 4]) != crc:
                raise CdrError(f"{where}: attachment '{name}' fails its CRC check (corrupt)")
            self._attachments.setdefault(name, data)
        elif op == OP_METADATA_INDEX:
            offset, length = cur.take("<QQ")
            self._f.seek(offset)
            rec2 = self._f.read(length)
            if len(rec2) < length or rec2[0] != OP_METADATA:
                raise CdrError(f"metadata index points at byte offset {offset}, which holds no metadata")
            self._parse_record(OP_METADATA, memoryview(rec2)[9:], f"Metadata record at byte offset {offset}")
        elif op == OP_METADATA:
            cur.str()
            self.metadata.update(cur.map())

    def _cheap_counts(self) -> dict[int, int] | None:
        """Messages per channel id without decompressing: statistics, else message indexes; None if any
        chunk lacks both."""
        if self._stats_counts is not None:
            return self._stats_counts
        counts: dict[int, int] = {}
        for c in self._chunks:
            if c.counts is None:
                return None
            for cid, n in c.counts.items():
                counts[cid] = counts.get(cid, 0) + n
        return counts
