"""cronloop.systemd.journald and .entries against a real AF_UNIX socket standing in for journald."""

from __future__ import annotations

import array
import datetime as dt
import enum
import fcntl
import io
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from cronloop.systemd.entries import JournalRenderer, fallback_line, journal_fields
from cronloop.systemd.journald import TRUNCATE_AT, JournalSender, field_name, stream_is_journal

MARKER = "…[truncated]".encode()


def parse(datagram: bytes) -> list[tuple[str, bytes]]:
    """Decode the native protocol, both encodings, strictly (any slack is an error)."""
    fields = []
    pos = 0
    while pos < len(datagram):
        eol = datagram.index(b"\n", pos)
        line = datagram[pos:eol]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = eol + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", datagram[eol + 1 : eol + 9])
            value = datagram[eol + 9 : eol + 9 + size]
            assert datagram[eol + 9 + size : eol + 10 + size] == b"\n", "value not terminated"
            pos = eol + 10 + size
        fields.append((name.decode("ascii"), value))
    return fields


class Journald:
    """The receiving end of /run/systemd/journal/socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(2)

    def recv_raw(self) -> tuple[bytes, list[int]]:
        data, ancdata, _flags, _addr = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
        fds = array.array("i")
        for level, kind, payload in ancdata:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        return data, list(fds)

    def recv(self) -> dict[str, str]:
        data, fds = self.recv_raw()
        assert fds == []
        return {name: value.decode() for name, value in parse(data)}

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(1 << 20)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2)
        return False

    def close(self) -> None:
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journald]:
    j = Journald(str(tmp_path / "journal"))
    yield j
    j.close()


@pytest.fixture
def sender(journal: Journald) -> Iterator[JournalSender]:
    s = JournalSender(journal.path)
    yield s
    s.close()


# -- the wire format ------------------------------------------------------------------


def test_simple_fields_exact_datagram(journal: Journald, sender: JournalSender) -> None:
    assert sender.send({"MESSAGE": "backup done", "PRIORITY": "6", "DURATION_MS": 1520})
    assert journal.sock.recv(65536) == b"MESSAGE=backup done\nPRIORITY=6\nDURATION_MS=1520\n"


def test_multiline_value_uses_length_prefixed_encoding(
    journal: Journald, sender: JournalSender
) -> None:
    value = "first line\nsecond = line\n"
    assert sender.send({"MESSAGE": value, "TASK": "backup"})
    expected = b"MESSAGE\n" + struct.pack("<Q", len(value)) + value.encode() + b"\nTASK=backup\n"
    data = journal.sock.recv(65536)
    assert data == expected
    assert parse(data) == [("MESSAGE", value.encode()), ("TASK", b"backup")]


def test_utf8_and_bytes_values(journal: Journald, sender: JournalSender) -> None:
    assert sender.send({"MESSAGE": "prêt ✓", "BLOB": b"\x00\x01\nraw"})
    assert parse(journal.sock.recv(65536)) == [
        ("MESSAGE", "prêt ✓".encode()),
        ("BLOB", b"\x00\x01\nraw"),
    ]


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("run_id", "RUN_ID"),
        ("RUN_ID", "RUN_ID"),
        ("duration_ms", "DURATION_MS"),
        ("run-id", "RUNID"),
        ("task.name", "TASKNAME"),
        ("_private", "PRIVATE"),
        ("__x", "X"),
        ("2fa", "FA"),
        ("_9_lives", "LIVES"),
        ("café", "CAF"),
        ("é", None),
        ("_", None),
        ("", None),
        ("a" * 80, "A" * 64),
    ],
)
def test_field_name(key: str, name: str | None) -> None:
    assert field_name(key) == name


def test_invalid_names_are_converted_or_dropped(journal: Journald, sender: JournalSender) -> None:
    assert sender.send({"message": "x", "run-id": "r1", "_SYSTEMD_UNIT": "forged", "é": "y"})
    assert journal.recv() == {"MESSAGE": "x", "RUNID": "r1", "SYSTEMD_UNIT": "forged"}
    assert sender.send({"é": "nothing valid"}) is False
    assert journal.nothing_pending()


# -- errors ---------------------------------------------------------------------------


def test_missing_socket_returns_false(tmp_path: Path) -> None:
    s = JournalSender(str(tmp_path / "no-journald"))
    assert s.send({"MESSAGE": "lost"}) is False
    assert s.send({"MESSAGE": "lost again"}) is False
    s.close()


def test_reconnects_after_journald_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    j = Journald(path)
    s = JournalSender(path)
    try:
        assert s.send({"MESSAGE": "one"})
        assert j.recv() == {"MESSAGE": "one"}
        j.close()
        j = Journald(path)  # a new socket at the same path
        assert s.send({"MESSAGE": "two"})
        assert j.recv() == {"MESSAGE": "two"}
    finally:
        s.close()
        j.close()


def test_full_queue_returns_false_without_blocking(
    journal: Journald, sender: JournalSender
) -> None:
    started = time.monotonic()
    results = [sender.send({"MESSAGE": f"entry {i}"}) for i in range(5000)]
    assert time.monotonic() - started < 5
    assert results[0] is True
    assert False in results  # ENOBUFS/EAGAIN: reported, not raised, not blocking


# -- oversized entries --------------------------------------------------------------


def _oversized() -> int:
    """A size above the datagram limit (the socket send buffer) on this machine."""
    wmem = int(Path("/proc/sys/net/core/wmem_default").read_text())
    return max(1 << 20, 2 * wmem)


def test_oversized_entry_goes_through_a_sealed_memfd(
    journal: Journald, sender: JournalSender
) -> None:
    big = "x" * _oversized() + "\nend"
    assert sender.send({"MESSAGE": "huge", "EXCEPTION": big})
    data, fds = journal.recv_raw()
    assert data == b""
    assert len(fds) == 1
    fd = fds[0]
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        required = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        assert seals & required == required
        payload = os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)
    assert parse(payload) == [("MESSAGE", b"huge"), ("EXCEPTION", big.encode())]


def test_oversized_entry_is_truncated_without_memfd(
    journal: Journald, sender: JournalSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memfd(*args: object) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    # "a" then two-byte characters: the cut at TRUNCATE_AT falls inside a character.
    big = "a" + "é" * _oversized()
    assert sender.send({"MESSAGE": "huge", "DETAIL": big, "TASK": "backup"})
    fields = dict(parse(journal.sock.recv(1 << 20)))
    assert fields["MESSAGE"] == b"huge"
    assert fields["TASK"] == b"backup"
    detail = fields["DETAIL"]
    assert detail.endswith(MARKER)
    kept = detail[: -len(MARKER)]
    assert TRUNCATE_AT - 1 <= len(kept) <= TRUNCATE_AT
    assert big.encode().startswith(kept)
    kept.decode("utf-8")  # no character cut in half


def test_entry_that_cannot_fit_even_truncated_returns_false(
    journal: Journald, sender: JournalSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memfd(*args: object) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    many = {f"FIELD_{i}": "y" * (TRUNCATE_AT + 1) for i in range(_oversized() // TRUNCATE_AT)}
    assert sender.send(many) is False
    assert journal.nothing_pending()


# -- structlog event dicts to fields ------------------------------------------------


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        ("critical", "2"),
        ("error", "3"),
        ("exception", "3"),
        ("warning", "4"),
        ("WARNING", "4"),
        ("warn", "4"),
        ("info", "6"),
        ("debug", "7"),
        ("chatty", "6"),
        (None, "6"),
    ],
)
def test_priority_from_level(level: str | None, priority: str) -> None:
    event: dict[str, object] = {"event": "x"}
    if level is not None:
        event["level"] = level
    assert journal_fields(event)["PRIORITY"] == priority


class Outcome(enum.Enum):
    SUCCESS = "success"


def test_fields_and_message() -> None:
    next_run = dt.datetime(2024, 3, 1, 23, 30, tzinfo=dt.UTC)
    fields = journal_fields(
        {
            "event": "run finished",
            "level": "info",
            "task": "backup",
            "run_id": "r-17",
            "outcome": Outcome.SUCCESS,
            "duration_ms": 1520,
            "next_run": next_run,
            "worker": "web1:4242",
            "note": 'two words "quoted"',
            "empty": "",
            "timestamp": "2024-03-01T22:00:00Z",
            "é": "only in the message",
        },
        identifier="cronloop-test",
    )
    assert fields == {
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "cronloop-test",
        "MESSAGE": (
            "run finished task=backup run_id=r-17 outcome=success duration_ms=1520"
            " next_run=2024-03-01T23:30:00+00:00 worker=web1:4242"
            ' note="two words \\"quoted\\"" empty="" é="only in the message"'
        ),
        "TASK": "backup",
        "RUN_ID": "r-17",
        "OUTCOME": "success",
        "DURATION_MS": "1520",
        "NEXT_RUN": "2024-03-01T23:30:00+00:00",
        "WORKER": "web1:4242",
        "NOTE": 'two words "quoted"',
        "EMPTY": "",
        "TIMESTAMP": "2024-03-01T22:00:00Z",
    }


def test_multiline_context_value_stays_on_the_message_line() -> None:
    fields = journal_fields({"event": "query failed", "sql": "SELECT 1\nFROM t"})
    assert fields["MESSAGE"] == 'query failed sql="SELECT 1\\nFROM t"'
    assert fields["SQL"] == "SELECT 1\nFROM t"


def test_exception_and_code_location() -> None:
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad\n'
    fields = journal_fields(
        {
            "event": "task crashed",
            "level": "error",
            "task": "backup",
            "exception": tb,
            "filename": "runner.py",
            "lineno": 120,
            "func_name": "run",
        }
    )
    assert fields["MESSAGE"] == "task crashed task=backup\n" + tb.rstrip("\n")
    assert fields["EXCEPTION"] == tb.rstrip("\n")
    assert fields["PRIORITY"] == "3"
    assert (fields["CODE_FILE"], fields["CODE_LINE"], fields["CODE_FUNC"]) == (
        "runner.py",
        "120",
        "run",
    )
    assert not {"FILENAME", "LINENO", "FUNC_NAME", "LEVEL", "EVENT"} & fields.keys()
    # pathname (the full path) wins over filename when both are there.
    both = journal_fields({"event": "x", "pathname": "/srv/w/runner.py", "filename": "runner.py"})
    assert both["CODE_FILE"] == "/srv/w/runner.py"


def test_unformatted_exc_info_is_formatted() -> None:
    try:
        raise ValueError("bad")
    except ValueError as exc:
        from_true = journal_fields({"event": "oops", "exc_info": True})
        from_exc = journal_fields({"event": "oops", "exc_info": exc})
    for fields in (from_true, from_exc):
        assert fields["EXCEPTION"].startswith("Traceback (most recent call last):")
        assert fields["EXCEPTION"].endswith("ValueError: bad")
        assert fields["MESSAGE"] == "oops\n" + fields["EXCEPTION"]
    assert "EXCEPTION" not in journal_fields({"event": "x", "exc_info": False})


def test_context_keys_do_not_overwrite_reserved_fields() -> None:
    fields = journal_fields(
        {"event": "x", "message": "m", "priority": "high", "syslog_identifier": "evil"}
    )
    assert fields["MESSAGE"] == "x message=m priority=high syslog_identifier=evil"
    assert fields["PRIORITY"] == "6"
    assert fields["SYSLOG_IDENTIFIER"] == "cronloop"
    assert fields["CONTEXT_MESSAGE"] == "m"
    assert fields["CONTEXT_PRIORITY"] == "high"
    assert fields["CONTEXT_SYSLOG_IDENTIFIER"] == "evil"


def test_fallback_line_prefixes_every_line() -> None:
    assert fallback_line({"PRIORITY": "3", "MESSAGE": "crashed x=1\nTraceback\n  File"}) == (
        "<3>crashed x=1\n<3>Traceback\n<3>  File"
    )


# -- the structlog processor ----------------------------------------------------------


def _logger(sender: JournalSender, out: io.StringIO) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            JournalRenderer(sender),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(0),
    )
    return logger


def test_renderer_sends_one_entry_per_event_and_prints_nothing(
    journal: Journald, sender: JournalSender
) -> None:
    out = io.StringIO()
    log = _logger(sender, out).bind(task="backup", run_id="r-1")
    log.info("run finished", outcome="success")
    try:
        raise RuntimeError("disk full\nsecond line of the error")
    except RuntimeError:
        log.exception("run crashed")
    assert out.getvalue() == ""

    first = journal.recv()
    assert first["MESSAGE"] == "run finished task=backup run_id=r-1 outcome=success"
    assert (first["PRIORITY"], first["TASK"], first["OUTCOME"]) == ("6", "backup", "success")

    second = journal.recv()  # the whole traceback: one datagram, one entry
    assert journal.nothing_pending()
    head, _, tb = second["MESSAGE"].partition("\n")
    assert head == "run crashed task=backup run_id=r-1"
    assert tb.startswith("Traceback (most recent call last):")
    assert tb.endswith("RuntimeError: disk full\nsecond line of the error")
    assert second["EXCEPTION"] == tb
    assert second["PRIORITY"] == "3"
    assert second["SYSLOG_IDENTIFIER"] == "cronloop"


def test_renderer_falls_back_to_a_prefixed_line(tmp_path: Path) -> None:
    out = io.StringIO()
    log = _logger(JournalSender(str(tmp_path / "no-journald")), out)
    log.warning("db unreachable", retry_in_s=5)
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("crashed")
    lines = out.getvalue().splitlines()
    assert lines[0] == "<4>db unreachable retry_in_s=5"
    assert lines[1] == "<3>crashed"
    assert lines[2] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ValueError: bad"
    assert all(line.startswith("<3>") for line in lines[1:])


def test_renderer_uses_method_name_without_add_log_level(
    journal: Journald, sender: JournalSender
) -> None:
    log = structlog.wrap_logger(
        structlog.PrintLogger(io.StringIO()), processors=[JournalRenderer(sender)]
    )
    log.warning("careful")
    assert journal.recv()["PRIORITY"] == "4"


# -- is stderr the journal? -----------------------------------------------------------


def test_stream_is_journal_matches_device_and_inode() -> None:
    r, w = os.pipe()
    other_r, other_w = os.pipe()
    try:
        st = os.fstat(w)
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(w, env) is True
        assert stream_is_journal(other_w, env) is False  # inherited variable, other stream
        assert stream_is_journal(w, {}) is False
        assert stream_is_journal(w, {"JOURNAL_STREAM": "garbage"}) is False
        assert stream_is_journal(w, {"JOURNAL_STREAM": f"{st.st_dev}:x"}) is False
    finally:
        for fd in (r, other_r, other_w):
            os.close(fd)
    os.close(w)
    assert stream_is_journal(w, env) is False  # a closed descriptor: no error, just False


def test_stream_is_journal_defaults_to_stderr_and_os_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert stream_is_journal() is True
    monkeypatch.delenv("JOURNAL_STREAM")
    assert stream_is_journal() is False
