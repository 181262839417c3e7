"""The gateway's socket: a PDU read whole in few calls, its announced length bounded first."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from dicom_gateway.limits import BoundedSocket


def _bounded(sock: socket.socket, limit: int) -> BoundedSocket:
    bounded = BoundedSocket.__new__(BoundedSocket)  # no association: only the reading is tested
    bounded.socket = sock
    bounded.limit = limit
    return bounded


def test_a_pdu_sent_in_pieces_is_read_whole_and_a_closed_peer_ends_the_read() -> None:
    ours, peer = socket.socketpair()
    payload = os.urandom(3 << 20)

    def send() -> None:
        for start in range(0, len(payload), 1000):  # many small writes, read as they come
            peer.sendall(payload[start : start + 1000])
        peer.sendall(b"tail")
        peer.close()

    sender = threading.Thread(target=send)
    sender.start()
    bounded = _bounded(ours, limit=4 << 20)
    try:
        assert bounded.recv(len(payload)) == payload
        assert bounded.recv(100) == b"tail"  # the peer closed: what came, no more
        assert bounded.recv(100) == b""
    finally:
        sender.join()
        ours.close()


def test_a_pdu_longer_than_the_limit_is_refused_before_it_is_read() -> None:
    ours, peer = socket.socketpair()
    try:
        peer.sendall(b"x" * 100)
        with pytest.raises(OSError, match="limit 64"):
            _bounded(ours, limit=64).recv(100)
        assert ours.recv(200) == b"x" * 100  # nothing was taken from the socket
    finally:
        ours.close()
        peer.close()
