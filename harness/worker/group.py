"""The harness's own channel between the workers of one multi-worker trial (standard library only).

The framework's collectives move gradients; this channel only makes the workers agree on the
measurement: how many steps a timed window holds, when to stop, and each window's time as the
slowest worker saw it (a step of a synchronous data-parallel job lasts as long as its slowest
worker). It is independent of the framework so that every framework is timed the same way, and it
fails loudly: a peer that dies closes its socket, a peer that hangs misses the deadline, and both
raise :class:`PeerLost` naming the rank instead of blocking the trial until its timeout.

Rank 0 listens on the ``group`` address the driver handed out; every other rank connects to it.
One exchange is one line of JSON per rank up and one line down.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence


class PeerLost(RuntimeError):
    """A peer of this multi-worker trial died, hung or could not be reached."""


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Group:
    """``world`` workers of one trial; ``rank`` 0 serves, the others connect (within ``timeout_s``)."""

    def __init__(self, rank: int, world: int, address: str, timeout_s: float):
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        host, port = _split(address)
        deadline = time.monotonic() + timeout_s
        self._peers: dict[int, tuple[socket.socket, socket.SocketIO]] = {}
        if rank == 0:
            server = socket.create_server(("", port), reuse_port=False)
            server.settimeout(timeout_s)
            try:
                while len(self._peers) < world - 1:
                    server.settimeout(max(0.1, deadline - time.monotonic()))
                    try:
                        conn, _ = server.accept()
                    except TimeoutError:
                        missing = sorted(set(range(1, world)) - set(self._peers))
                        raise PeerLost(f"rank(s) {missing} of {world} never joined within {timeout_s:g} s") from None
                    conn.settimeout(timeout_s)
                    reader = conn.makefile("rb")
                    hello = json.loads(reader.readline() or b"{}")
                    self._peers[int(hello["rank"])] = (conn, reader)  # type: ignore[assignment]
            finally:
                server.close()
        else:
            while True:
                try:
                    conn = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
                    break
                except OSError as e:
                    if time.monotonic() > deadline:
                        raise PeerLost(
                            f"rank 0 at {address} could not be reached within {timeout_s:g} s: {e}"
                        ) from None
                    time.sleep(0.05)
            conn.settimeout(timeout_s)
            self._peers[0] = (conn, conn.makefile("rb"))  # type: ignore[assignment]
            self._send(0, {"rank": rank})

    def _send(self, peer: int, message: object) -> None:
        try:
            self._peers[peer][0].sendall(json.dumps(message).encode() + b"\n")
        except OSError as e:
            raise PeerLost(f"rank {peer} is gone ({e})") from None

    def _receive(self, peer: int) -> list[float]:
        try:
            line = self._peers[peer][1].readline()
        except TimeoutError:
            raise PeerLost(f"rank {peer} sent nothing for {self.timeout_s:g} s (hung or stalled)") from None
        except OSError as e:
            raise PeerLost(f"rank {peer} is gone ({e})") from None
        if not line:
            raise PeerLost(f"rank {peer} closed its connection (it died or gave up)")
        values: list[float] = json.loads(line)
        return values

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum of ``values`` over every rank (all ranks get the same answer)."""
        if self.world == 1:
            return list(values)
        if self.rank != 0:
            self._send(0, list(values))
            return self._receive(0)
        out = list(values)
        for peer in sorted(self._peers):
            out = [max(a, b) for a, b in zip(out, self._receive(peer), strict=True)]
        for peer in sorted(self._peers):
            self._send(peer, out)
        return out

    def close(self) -> None:
        for conn, reader in self._peers.values():
            reader.close()
            conn.close()
        self._peers.clear()
