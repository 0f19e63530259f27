"""cronloop.systemd.datagram: the one socket notify and journald share, on real sockets."""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
from pathlib import Path

import pytest

from cronloop.systemd.datagram import UnixDatagram


def _bound(path: Path) -> socket.socket:
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(str(path))
    peer.settimeout(2)
    return peer


def test_one_lazy_nonblocking_cloexec_socket_survives_a_peer_restart(tmp_path: Path) -> None:
    path = tmp_path / "peer"
    channel = UnixDatagram(str(path))
    assert channel.sock is None  # nothing opened before the first send
    peer = _bound(path)
    channel.send(b"one")
    sock = channel.sock
    assert sock is not None and sock.getblocking() is False
    assert fcntl.fcntl(sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert peer.recv(64) == b"one"
    peer.close()
    path.unlink()
    peer = _bound(path)  # a new socket at the same path: reconnected within the same send
    channel.send(b"two")
    assert peer.recv(64) == b"two" and channel.sock is not sock
    channel.close()
    peer.close()


def test_a_failed_send_raises_and_drops_the_socket(tmp_path: Path) -> None:
    channel = UnixDatagram(str(tmp_path / "nobody"))
    with pytest.raises(FileNotFoundError):
        channel.send(b"x")
    assert channel.sock is None


def test_too_big_raises_emsgsize_and_keeps_the_socket(tmp_path: Path) -> None:
    peer = _bound(tmp_path / "peer")
    channel = UnixDatagram(str(tmp_path / "peer"))
    channel.send(b"small")
    with pytest.raises(OSError) as info:
        channel.send(b"x" * (16 << 20))
    assert info.value.errno == errno.EMSGSIZE and channel.sock is not None
    channel.close()
    peer.close()


def test_send_fds_passes_a_descriptor(tmp_path: Path) -> None:
    peer = _bound(tmp_path / "peer")
    channel = UnixDatagram(str(tmp_path / "peer"))
    read_end, write_end = os.pipe()
    try:
        channel.send_fds([write_end])
        data, ancdata, _flags, _addr = peer.recvmsg(16, socket.CMSG_SPACE(4))
        fds = array.array("i")
        fds.frombytes(ancdata[0][2][:4])
        os.write(fds[0], b"via fd")
        os.close(fds[0])
        assert data == b"" and os.read(read_end, 16) == b"via fd"
    finally:
        os.close(read_end)
        os.close(write_end)
        channel.close()
        peer.close()
