"""Every file nextab keeps survives damage and kill -9: it loads, or is moved aside and rebuilt.

Each store (the repository index, the edit history, the acceptance log, calibration records,
converted models' markers) is corrupted in every way a disk or a crash can (flipped bytes,
truncation, garbage, an empty file) and written by a process that is SIGKILLed at random
moments; loading must give the old content, the new one, or a clean miss, never a crash or a
mix, and the next save must work.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nextab import storage
from nextab.acceptance import AcceptanceLog, Outcome
from nextab.context.history import Edit, EditHistory
from nextab.context.index import IndexedFile, load_store, save_store
from nextab.models.calibration import (
    ThresholdFit,
    calibration_path,
    load_threshold,
    save_calibration,
)
from nextab.models.resolve import MARKER_NAME, _fsync_tree, _is_complete, _write_marker

POSIX = os.name == "posix"
ROOT = Path(__file__).resolve().parent.parent


# -- the stores, behind one interface ----------------------------------------------------------
#
# `save(path, generation)` writes content determined by the generation; `load(path)` gives back
# what loads, as comparable items; `expected(generation)` is what a whole save of it loads as.


def _entries(generation: int, count: int = 1000) -> list[IndexedFile]:
    padding = "p" * 2000  # paths long enough that a save takes a while to write
    return [IndexedFile(f"src/{padding}/{n}.txt", None, n, generation, None) for n in range(count)]


def _edit(generation: int, n: int, size: int = 2000) -> Edit:
    text = f"g{generation}e{n}" + "x" * size
    return Edit(
        uri="file:///ws/a.py",
        start=n,
        old="",
        new=text,
        time=1000.0 + n,
        version=generation,
        line=n,
        head="",
        tail="",
        truncated=False,
        clipped=False,
        old_length=0,
        new_length=len(text),
    )


def _fit(generation: int) -> ThresholdFit:
    return ThresholdFit(1.0 + generation, 1.0, -1.0, 0.5, 0.5, 0.9, 0.9, 100, 0.8)


@dataclass(frozen=True)
class Store:
    name: str
    save: Callable[[Path, int], None]
    load: Callable[[Path], list[Any]]
    expected: Callable[[int], list[Any]]
    framed: bool  # damage is always detected (checksums over every byte)


def _index_load(path: Path) -> list[Any]:
    return sorted((e.path, e.size, e.mtime_ns) for e in load_store(path).values())


def _history_save(path: Path, generation: int) -> None:
    edits = [_edit(generation, n) for n in range(40)]
    assert EditHistory(edits=edits, limit=100).save(path)


def _history_expected(generation: int) -> list[Any]:
    return [(e.new, e.version) for e in (_edit(generation, n) for n in range(40))]


def _history_load(path: Path) -> list[Any]:
    return [(e.new, e.version) for e in EditHistory.load(path, limit=100).edits()]


def _model() -> Path:
    """The model calibrated: one per test (beside its cache), made before any writer starts."""
    model = Path(os.environ["NEXTAB_CACHE_DIR"]).parent / "model"
    if not model.is_dir():
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "qwen2"}')
    return model


def _calibration_save(_path: Path, generation: int) -> None:
    padding = "x" * 200_000  # a save that takes a while to write
    details = {"generation": generation, "padding": padding}
    save_calibration(_model(), "m", _fit(generation), details)


def _calibration_load(_path: Path) -> list[Any]:
    threshold = load_threshold(_model(), "m")
    return [] if threshold is None else [threshold]


STORES = [
    Store(
        "index",
        lambda path, g: save_store(path, _entries(g)),
        _index_load,
        lambda g: sorted((e.path, e.size, e.mtime_ns) for e in _entries(g)),
        framed=True,
    ),
    Store(
        "history",
        _history_save,
        _history_load,
        _history_expected,
        framed=True,
    ),
    Store(
        "calibration",
        _calibration_save,
        _calibration_load,
        lambda g: [1.0 + g],
        framed=False,
    ),
]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEXTAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _store_path(store: Store, tmp_path: Path) -> Path:
    if store.name == "calibration":
        return calibration_path(_model(), "m")
    return tmp_path / "ws" / f"{store.name}.bin"


def _damaged(data: bytes) -> Iterator[tuple[str, bytes]]:
    for at in (0, 3, 9, 21, 30, len(data) // 3, len(data) // 2, len(data) - 5, len(data) - 1):
        flipped = bytearray(data)
        flipped[at] ^= 0x41
        yield f"byte {at} flipped", bytes(flipped)
    for cut in (1, 10, 19, 27, len(data) // 3, len(data) // 2, len(data) - 1):
        yield f"cut at {cut}", data[:cut]
    yield "garbage", bytes(random.Random(7).randrange(256) for _ in range(300))
    yield "text", b"hello, not a cache file\n"
    yield "empty", b""
    yield "trailing bytes", data + b"\x00stray"


def _is_subsequence(part: list[Any], whole: list[Any]) -> bool:
    rest = iter(whole)
    return all(item in rest for item in part)


def _quarantined(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


# -- (a) damage --------------------------------------------------------------------------------


@pytest.mark.parametrize("store", STORES, ids=lambda s: s.name)
def test_a_damaged_store_is_a_clean_miss_moved_aside_and_saved_again(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _store_path(store, tmp_path)
    store.save(path, 1)
    good = path.read_bytes()
    assert store.load(path) == store.expected(1)  # the positive path
    for how, data in _damaged(good):
        path.write_bytes(data)
        for old in _quarantined(path):
            old.unlink()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            loaded = store.load(path)
        # What loads is never garbage: the records that check out, or nothing.
        assert _is_subsequence(loaded, store.expected(1)), how
        if loaded != store.expected(1) or store.framed:
            assert not path.exists(), f"{how}: not moved aside"
            assert len(_quarantined(path)) == 1 and _quarantined(path)[0].read_bytes() == data
            assert "corrupt" in caplog.text and path.name in caplog.text, how
        store.save(path, 2)
        assert store.load(path) == store.expected(2), how
    assert len(_quarantined(path)) <= storage.KEEP_QUARANTINED


def test_one_bad_record_in_the_history_costs_that_edit_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.bin"
    _history_save(path, 1)
    data = bytearray(path.read_bytes())
    marker = b"g1e7x"  # inside the eighth edit's record
    data[data.index(marker) + 2] ^= 0x01
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        loaded = _history_load(path)
    expected = _history_expected(1)
    assert loaded == expected[:7] + expected[8:]
    assert "1 damaged record" in caplog.text and _quarantined(path)


def test_one_bad_record_in_the_index_is_reparsed_the_others_kept(tmp_path: Path) -> None:
    path = tmp_path / "index.bin"
    save_store(path, _entries(1))
    data = bytearray(path.read_bytes())
    data[data.index(b"/17.txt") + 2] ^= 0x01
    path.write_bytes(bytes(data))
    loaded = _index_load(path)
    assert len(loaded) == 999 and all(entry[1] != 17 for entry in loaded)


def test_an_older_store_format_is_rebuilt_not_moved_aside(tmp_path: Path) -> None:
    import msgpack

    path = tmp_path / "index.bin"
    path.write_bytes(msgpack.packb({"format": 1, "languages": {}, "files": []}))
    assert load_store(path) == {} and path.exists() and not _quarantined(path)
    framed = storage.pack_records(b"INDX", 999, [])
    path.write_bytes(framed)
    assert load_store(path) == {} and path.exists() and not _quarantined(path)


# -- the acceptance log: append-only, damage is per line ---------------------------------------


def _outcome(n: int) -> Outcome:
    return Outcome("completion", "accepted", "python", 10 + n, n % 10, 50.0, "m", 1000.0 + n)


def test_a_bad_line_in_the_acceptance_log_is_a_miss_and_appends_go_on(tmp_path: Path) -> None:
    log = AcceptanceLog(tmp_path / "a.jsonl")
    for n in range(5):
        log.append(_outcome(n))
    lines = log.path.read_bytes().splitlines(keepends=True)
    # Still JSON, but not what was written: only the checksum tells.
    lines[1] = lines[1].replace(b'"shown_chars":11', b'"shown_chars":99')
    lines[3] = lines[3][:-1] + b"\x00garbage\n"
    log.path.write_bytes(b"".join(lines) + b'{"format":"nextab.acceptance/2","ki')  # torn
    found, skipped = log.read()
    assert [o.shown_chars for o in found] == [10, 12, 14] and skipped == 3
    log.append(_outcome(5))
    found, skipped = log.read()
    assert [o.shown_chars for o in found] == [10, 12, 14, 15] and skipped == 3


def test_the_acceptance_log_reads_lines_written_before_checksums(tmp_path: Path) -> None:
    log = AcceptanceLog(tmp_path / "a.jsonl")
    old = {"format": "nextab.acceptance/1", "kind": "completion", "result": "dismissed"}
    old |= {"language": "go", "shown_chars": 4, "accepted_chars": 0, "latency_ms": None}
    log.path.write_text(json.dumps(old) + "\n")
    log.append(_outcome(1))
    found, skipped = log.read()
    assert [(o.result, o.language) for o in found] == [("dismissed", "go"), ("accepted", "python")]
    assert skipped == 0


@pytest.mark.parametrize("how", ["garbage", "empty", "a directory"])
def test_a_wrecked_acceptance_log_reads_as_no_records(tmp_path: Path, how: str) -> None:
    log = AcceptanceLog(tmp_path / "a.jsonl")
    if how == "garbage":
        log.path.write_bytes(bytes(random.Random(3).randrange(256) for _ in range(2000)))
    elif how == "empty":
        log.path.write_bytes(b"")
    else:
        log.path.mkdir()
    found, _ = log.read()
    assert found == []
    if how != "a directory":
        log.append(_outcome(1))
        assert [o.shown_chars for o in log.read()[0]] == [11]


# -- converted models' markers -----------------------------------------------------------------


def test_a_damaged_model_marker_means_convert_again(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    _write_marker(folder, {"source_sha256": "abc"})
    assert _is_complete(folder, source_sha256="abc")
    marker = folder / MARKER_NAME
    good = marker.read_bytes()
    marker.write_bytes(good.replace(b'"abc"', b'"abd"'))  # still JSON, checksum off
    assert not _is_complete(folder, source_sha256="abd")
    for cut in (0, 10, len(good) // 2, len(good) - 3):
        marker.write_bytes(good[:cut])
        assert not _is_complete(folder, source_sha256="abc")
    # Markers from before checksums: their folders were renamed in whole, still trusted.
    marker.write_text(json.dumps({"format_version": 1, "source_sha256": "abc"}))
    assert _is_complete(folder, source_sha256="abc")


# -- (b) kill -9 while writing -----------------------------------------------------------------

_WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from tests.test_cachefiles import STORES
store = next(s for s in STORES if s.name == {name!r})
path = Path({path!r})
generation = {start}
while True:
    generation += 1
    store.save(path, generation)
    print(generation, flush=True)
"""


def _kill_while_writing(store_name: str, path: Path, start: int, env: dict[str, str]) -> int:
    """Run a writer saving generations start+1, start+2, ...; SIGKILL it at a random moment
    once it has saved a few; the last generation it reported saved."""
    code = textwrap.dedent(_WRITER).format(
        tests=str(ROOT), name=store_name, path=str(path), start=start
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    assert writer.stdout is not None
    saved = start
    try:
        for _ in range(2):  # the writer is up and saving
            line = writer.stdout.readline()
            assert line, "the writer died"
            saved = int(line)
        time.sleep(random.uniform(0, 0.05))
    finally:
        writer.send_signal(signal.SIGKILL)
        rest, _ = writer.communicate()
    return max([saved, *(int(line) for line in rest.split())])


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL here")
@pytest.mark.parametrize("store", STORES, ids=lambda s: s.name)
def test_kill_9_while_saving_leaves_the_old_or_the_new_store(
    store: Store, tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _store_path(store, tmp_path)
    env = {**os.environ, "NEXTAB_CACHE_DIR": str(cache)}
    generation = 0
    for _ in range(3):
        saved = _kill_while_writing(store.name, path, generation, env)
        with caplog.at_level(logging.WARNING):
            loaded = store.load(path)
        # The last save reported, or the one it had started after it: nothing else.
        assert loaded in (store.expected(saved), store.expected(saved + 1)), saved
        assert not _quarantined(path) and "corrupt" not in caplog.text
        generation = saved + 1
    store.save(path, generation + 1)
    assert store.load(path) == store.expected(generation + 1)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL here")
def test_kill_9_while_appending_leaves_a_readable_log(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from nextab.acceptance import AcceptanceLog
        from tests.test_cachefiles import _outcome
        log = AcceptanceLog(Path({str(path)!r}), max_bytes=20_000)  # rotates every ~80 records
        n = 0
        while True:
            log.append(_outcome(n))
            n += 1
            if n % 50 == 0:
                print(n, flush=True)
        """
    )
    for kill in range(1, 4):
        writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline()
        time.sleep(random.uniform(0, 0.05))
        writer.send_signal(signal.SIGKILL)
        writer.communicate()
        found, skipped = AcceptanceLog(path).read()
        assert found and skipped <= kill  # at most one torn line per kill
        assert all(o.accepted_chars == (o.shown_chars - 10) % 10 for o in found)
    log = AcceptanceLog(path, max_bytes=20_000)
    log.append(_outcome(12345))
    assert log.read()[0][-1].shown_chars == 12355


# -- (c) permissions ---------------------------------------------------------------------------


@pytest.fixture
def loose_umask() -> Iterator[None]:
    # With 022 a plain mkdir or open gives 0755/0644: the user-only modes must be nextab's.
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(not POSIX, reason="POSIX permissions")
@pytest.mark.usefixtures("loose_umask")
@pytest.mark.parametrize("store", STORES, ids=lambda s: s.name)
def test_stores_are_user_only(store: Store, tmp_path: Path) -> None:
    path = _store_path(store, tmp_path)
    store.save(path, 1)
    assert _mode(path) == 0o600
    for directory in (path.parent, *path.parent.parents):
        if directory == tmp_path:
            break
        assert _mode(directory) == 0o700, directory


@pytest.mark.skipif(not POSIX, reason="POSIX permissions")
@pytest.mark.usefixtures("loose_umask")
def test_the_acceptance_log_and_model_folders_are_user_only(tmp_path: Path) -> None:
    log = AcceptanceLog(tmp_path / "cache" / "logs" / "a.jsonl")
    log.append(_outcome(1))
    assert _mode(log.path) == 0o600
    assert _mode(log.path.parent) == 0o700 and _mode(log.path.parent.parent) == 0o700

    staging = tmp_path / "staging"
    (staging / "sub").mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"weights")
    (staging / "sub" / "extra.json").write_text("{}")
    _write_marker(staging, {"name": "m"})
    _fsync_tree(staging)
    assert _mode(staging) == 0o700 and _mode(staging / "sub") == 0o700
    for name in ("model.safetensors", "sub/extra.json", MARKER_NAME):
        assert _mode(staging / name) == 0o600, name


@pytest.mark.skipif(not POSIX, reason="POSIX permissions")
@pytest.mark.usefixtures("loose_umask")
def test_existing_directories_are_left_as_they_are(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    os.chmod(mine, 0o755)
    storage.write_atomic(mine / "nextab" / "f", b"x")
    assert _mode(mine) == 0o755 and _mode(mine / "nextab") == 0o700


# -- the shared pieces -------------------------------------------------------------------------


def test_quarantine_keeps_the_newest_few(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "store"
    for n in range(storage.KEEP_QUARANTINED + 3):
        path.write_bytes(b"bad %d" % n)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            aside = storage.quarantine(path, "corrupt (test)", what="test store")
        assert aside is not None and aside.read_bytes() == b"bad %d" % n
        assert len(caplog.records) == 1 and "moved it to" in caplog.text
    kept = _quarantined(path)
    assert [p.read_bytes() for p in kept] == [
        b"bad %d" % n for n in range(3, storage.KEEP_QUARANTINED + 3)
    ]


def test_a_temporary_file_left_by_a_killed_writer_is_cleaned_up_later(tmp_path: Path) -> None:
    path = tmp_path / "store"
    stale = tmp_path / ".store.abc123.tmp"
    fresh = tmp_path / ".store.def456.tmp"  # may be another process's write in progress
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    storage.write_atomic(path, b"whole")
    assert path.read_bytes() == b"whole" and not stale.exists() and fresh.exists()


def test_framing_round_trips_and_counts_what_it_loses() -> None:
    records = [b"", b"a", b"x" * 1000]
    data = storage.pack_records(b"TEST", 3, records, meta=b"meta")
    framed = storage.unpack_records(data, b"TEST", 3)
    assert (framed.meta, framed.records, framed.damaged) == (b"meta", records, 0)
    assert storage.unpack_records(data[:-1], b"TEST", 3).damaged == 1
    assert storage.unpack_records(data[:-1005], b"TEST", 3).records == records[:2]
    with pytest.raises(storage.OtherVersion):
        storage.unpack_records(data, b"TEST", 4)
    with pytest.raises(storage.Unreadable):
        storage.unpack_records(data, b"ELSE", 3)


def test_sealed_json_checks_out_only_unchanged() -> None:
    record = {"b": [1, 2.5, None], "a": "é", "n": {"x": -0.0}}
    sealed = json.loads(json.dumps(storage.seal(record), indent=3))
    assert storage.unseal(sealed) == record
    assert storage.unseal({**sealed, "a": "e"}) is None
    assert storage.unseal(record) is None  # no checksum at all


def test_lone_surrogates_in_edits_and_file_names_are_saved_and_loaded(tmp_path: Path) -> None:
    # Valid JSON from an editor ("\ud800") and a file name that is no UTF-8 both give Python
    # strings with lone surrogates, which strict UTF-8 packing refuses.
    history = EditHistory(root="/ws")
    history.record("file:///ws/a.py", "x = 1\n", 4, 5, "'\ud800'", 2)
    history.close_open_edits()
    assert history.save(tmp_path / "history")
    loaded = EditHistory.load(tmp_path / "history", root="/ws")
    assert [e.new for e in loaded.edits()] == [e.new for e in history.edits()]
    assert "\ud800" in loaded.edits()[0].new

    name = "src/caf\udce9.py"  # os.fsdecode(b"src/caf\xe9.py")
    save_store(tmp_path / "index", [IndexedFile(name, None, 3, 7, None)])
    assert list(load_store(tmp_path / "index")) == [name]
