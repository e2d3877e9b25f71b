"""Cache files that a crash cannot break: atomic writes, user-only permissions, checksums.

Everything nextab keeps between runs (the repository index, the edit history, the acceptance
log, calibration records, the markers of converted models) goes through here:

- `write_atomic` writes a whole file beside its destination and renames it over it, so a reader
  finds the old file or the new one, never part of one, whenever the writer is killed.
- Files are created 0600 and the directories nextab creates 0700: they hold the user's code and
  edits.
- Record files are framed (`pack_records`): a header (magic, kind, format version, record count,
  the header's checksum), a metadata record, then the records, each as its length, its payload
  and a checksum of both. `load_records` returns the records that check out and counts the
  others as misses; a file that is not one, or whose header is damaged, is moved aside
  (`quarantine`) with one warning and the caller starts afresh. Another format version is
  simply rebuilt.
- JSON records (one per line in a log, or a whole small file) carry their checksum as a field
  (`seal` / `unseal`), so they stay readable by people and tools.

The checksum is zlib's CRC-32, not a cryptographic hash: it guards against torn writes and
flipped bits, not against an attacker (who can write the file can write its checksum). It is in
the standard library, costs next to nothing per record and detects every error burst of up to
32 bits; a wrong length field makes the record's check fail too, since it covers the length.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import logging
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

MAGIC = b"\x89NXT"  # not ASCII, not a msgpack map: never mistaken for text or an older store
_HEADER = struct.Struct("<4s4sII")  # magic, kind, format version, record count
_U32 = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _U32.size  # the header and its checksum
RECORD_OVERHEAD = 2 * _U32.size  # each record's length and checksum
KEEP_QUARANTINED = 3  # moved-aside copies kept per file, the newest
STALE_TEMP_SECONDS = 600  # a temporary file this old was left by a killed writer
CHECKSUM_FIELD = "crc32"


class Unreadable(ValueError):
    """Not a file of the expected kind, or its header is damaged."""


class OtherVersion(ValueError):
    """A file of the expected kind in another format version."""

    def __init__(self, version: int) -> None:
        super().__init__(f"format version {version}")
        self.version = version


# -- writing -----------------------------------------------------------------------------------


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """`path` as a directory, its missing parts created user-only (0700).

    Directories that already exist are left as they are: they may be the user's own (a cache
    root named by NEXTAB_CACHE_DIR, their home).
    """
    path = Path(path)
    missing: list[Path] = []
    current = path
    while not current.is_dir() and current.parent != current:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # another process made it first
        # mkdir's mode passes through the umask; the cache must be user-only whatever it is.
        os.chmod(directory, 0o700)
    return path


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data` (0600) so that no crash leaves anything but old or new."""
    path = Path(path)
    make_private_dir(path.parent)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_dir(path.parent)
    _remove_stale_temporaries(path)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in `directory` durable (POSIX; elsewhere renames need no help)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename has happened all the same
    finally:
        os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    # A writer killed between mkstemp and the rename leaves its temporary file behind; an old
    # one is no other process's write in progress.
    cutoff = time.time() - STALE_TEMP_SECONDS
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()


# -- framed record files -----------------------------------------------------------------------


def pack_records(kind: bytes, version: int, records: Sequence[bytes], meta: bytes = b"") -> bytes:
    """A framed file of `kind` (4 bytes) holding `meta` and `records`."""
    if len(kind) != 4:
        raise ValueError(f"kind must be 4 bytes, not {kind!r}")
    header = _HEADER.pack(MAGIC, kind, version, len(records))
    parts = [header, _U32.pack(zlib.crc32(header)), _frame(meta)]
    parts.extend(_frame(record) for record in records)
    return b"".join(parts)


def _frame(payload: bytes) -> bytes:
    length = _U32.pack(len(payload))
    return length + payload + _U32.pack(zlib.crc32(payload, zlib.crc32(length)))


@dataclass(frozen=True)
class Framed(Generic[T]):
    meta: bytes
    records: list[T]
    damaged: int  # records lost: failed their check, cut off, undecodable; +1 for stray bytes


def unpack_records(data: bytes, kind: bytes, version: int) -> Framed[bytes]:
    """The records of a framed file; Unreadable or OtherVersion when there are none to trust."""
    if len(data) < HEADER_BYTES:
        raise Unreadable("empty" if not data else "cut short in its header")
    header = data[: _HEADER.size]
    magic, found_kind, found_version, count = _HEADER.unpack(header)
    if magic != MAGIC:
        raise Unreadable("not a nextab file")
    if zlib.crc32(header) != _U32.unpack_from(data, _HEADER.size)[0]:
        raise Unreadable("damaged in its header")
    if found_kind != kind:
        raise Unreadable(f"a {found_kind!r} file, not {kind!r}")
    if found_version != version:
        raise OtherVersion(found_version)
    meta, offset = _unframe(data, HEADER_BYTES)
    if meta is None:
        raise Unreadable("damaged in its metadata" if offset >= 0 else "cut short")
    records: list[bytes] = []
    damaged = 0
    for index in range(count):
        payload, offset = _unframe(data, offset)
        if offset < 0:
            damaged += count - index  # this record and all after it were cut off
            break
        if payload is None:
            damaged += 1
        else:
            records.append(payload)
    else:
        damaged += offset != len(data)
    return Framed(meta, records, damaged)


def _unframe(data: bytes, offset: int) -> tuple[bytes | None, int]:
    """The payload at `offset` (None when it fails its check) and where the next record starts
    (-1 when the data ends first).

    After a failed check the next record is looked for past this one's length all the same: if
    the length itself was hit, the records read from there fail their checks too.
    """
    start = offset + _U32.size
    if start > len(data):
        return None, -1
    (length,) = _U32.unpack_from(data, offset)
    end = start + length
    if end + _U32.size > len(data):
        return None, -1
    payload = data[start:end]
    expected = zlib.crc32(payload, zlib.crc32(data[offset:start]))
    ok = _U32.unpack_from(data, end)[0] == expected
    return (payload if ok else None), end + _U32.size


def load_records(
    path: Path,
    kind: bytes,
    version: int,
    decode: Callable[[bytes], T],
    *,
    what: str,
    then: str = "starting afresh",
    legacy: Callable[[bytes], bool] | None = None,
) -> Framed[T] | None:
    """The records of the framed file at `path` that check out and decode.

    None when there is nothing to use: no file, an unreadable one, another format version (or
    one that `legacy` recognises as written before framing), or one damaged beyond its records,
    which is moved aside with a warning. A file with some damaged records gives the others and
    is moved aside too, so that the next save writes a clean one.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("could not read %s %s (%s); %s", what, path, error, then)
        return None
    try:
        framed = unpack_records(data, kind, version)
    except OtherVersion as other:
        log.info(
            "%s %s has format version %d, not %d; %s", what, path, other.version, version, then
        )
        return None
    except Unreadable as error:
        if legacy is not None and _recognised(legacy, data):
            log.info("%s %s is in an older format; %s", what, path, then)
        else:
            quarantine(path, f"corrupt ({error})", what=what, then=then)
        return None
    items: list[T] = []
    damaged = framed.damaged
    for payload in framed.records:
        try:
            items.append(decode(payload))
        except Exception:  # decoders raise many unrelated types for bad input
            damaged += 1
    if damaged:
        reason = f"corrupt ({damaged} damaged record{'s' if damaged > 1 else ''})"
        quarantine(path, reason, what=what, then=f"kept its {len(items)} good ones")
    return Framed(framed.meta, items, damaged)


def _recognised(legacy: Callable[[bytes], bool], data: bytes) -> bool:
    try:
        return legacy(data)
    except Exception:
        return False


def quarantine(
    path: Path, reason: str, *, what: str = "file", then: str = "starting afresh"
) -> Path | None:
    """Move a damaged file aside (`NAME.corrupt-TIME`, the newest few kept) with one warning;
    where it went, or None if it could not be moved (the next save replaces it anyway)."""
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S.%f")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, aside)
    except OSError as error:
        log.warning(
            "%s %s is %s and could not be moved aside (%s); %s", what, path, reason, error, then
        )
        return None
    log.warning("%s %s is %s; moved it to %s and %s", what, path, reason, aside.name, then)
    kept = sorted(path.parent.glob(f"{glob.escape(path.name)}.corrupt-*"))
    for old in kept[:-KEEP_QUARANTINED]:
        with contextlib.suppress(OSError):
            old.unlink()
    return aside


# -- checksummed JSON records ------------------------------------------------------------------


def seal(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with its checksum added (as the field `crc32`)."""
    return {**record, CHECKSUM_FIELD: _json_checksum(record)}


def unseal(record: Any) -> dict[str, Any] | None:
    """A sealed record without its checksum; None unless it has one and it checks out."""
    if not isinstance(record, dict) or not isinstance(record.get(CHECKSUM_FIELD), str):
        return None
    body = {key: value for key, value in record.items() if key != CHECKSUM_FIELD}
    try:
        checksum = _json_checksum(body)
    except (TypeError, ValueError):
        return None
    return body if record[CHECKSUM_FIELD] == checksum else None


def _json_checksum(record: dict[str, Any]) -> str:
    # Over a canonical form, not the bytes on disk: JSON read back and written again this way
    # is the same text (floats round-trip through repr), so a record checks out wherever its
    # keys and spacing were put.
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{zlib.crc32(canonical.encode()):08x}"
