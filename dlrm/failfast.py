"""A failing rank ends the whole run: no rank is left waiting in a collective for one that is gone.

OneFlow 0.9.0 gives no help here. A rank that raises (or returns an error) does not even exit:
its interpreter's shutdown waits in OneFlow's environment teardown for the other ranks, which
wait in their next collective for it, so `python -m oneflow.distributed.launch` (which only acts
on an exited child) waits for ever.

So every launched rank keeps one TCP connection to rank 0 for the length of the run:
- a rank whose entry point fails prints its error, tells rank 0 (`F`) and leaves with os._exit
  (no OneFlow teardown);
- a rank that finishes says so (`D`) before the normal exit;
- a connection that closes without `D` (an exception, a kill, a segfault: the kernel closes the
  socket of a dead process) is a failed rank. Rank 0 then prints one line and leaves; its exit
  closes every other rank's connection, and each of them leaves too.
Blocked collectives release the GIL, so the watching threads run while the main thread waits.
A single process (no launcher) needs none of this.

Each entry point: `sys.exit(failfast.run(main))`, and inside main, once OneFlow is imported,
`failfast.watch(placement)` (a collective: rank 0's port is broadcast).
"""
import os
import socket
import sys
import threading
import time
import traceback

class Failure(Exception):
    """An error of this rank alone, explained by its one-line message (printed as `error: ...`): raised
    rather than returned, so that run() handles it while the failed frames are still alive."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


_conns = []  # this rank's connections: to every other rank on rank 0, to rank 0 elsewhere
_ended = threading.Event()  # this rank has sent its `D` or `F`
_failed = []  # this rank's failed exit code, once it has one
_lock = threading.Lock()
_watchers = []  # the threads reading each connection
# A rank that has sent `F` waits (at most this long) for its peers to leave before it leaves itself:
# OneFlow aborts a process whose peer's sockets close under it (a CHECK in its io_event_poller,
# SIGABRT and a stack dump), which would otherwise come before the peer's one line.
PEERS_LEAVE_S = 3.0
# A rank told of a peer's failure first gives its own failure this long (the same bad flag or agreed
# check fails every rank at once): then it leaves quietly, as that failure's line says all.
OWN_FAILURE_S = 0.5


def _leave(line, code=1):
    """End this process now: one line, flushed, then os._exit (OneFlow's teardown would wait for ranks
    that are gone)."""
    if line:
        print(line, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


def _send(message):
    with _lock:
        for conn in _conns:
            try:
                conn.sendall(message)
            except OSError:
                pass  # that peer is gone already; its own watcher handles it


def _watch_peer(conn, me, peer):
    """Read the peer's messages until it closes; a close without `D` ends this rank."""
    buffered = b""
    while True:
        try:
            chunk = conn.recv(4096)
        except OSError:
            chunk = b""
        if not chunk:
            break
        buffered += chunk
        if b"D" in buffered or b"F" in buffered:
            break
    if b"D" in buffered:
        return
    # Ranks that meet the same error (a bad flag, an agreed check) fail together: give this rank's
    # own failure a moment to end it, without a second line.
    if _ended.wait(OWN_FAILURE_S) and _failed:
        return
    who = "rank 0" if peer == 0 else f"rank {peer}"
    _leave(f"error: {who} ended with an error (see its line above); stopping rank {me}")


def _start_watcher(conn, me, peer):
    thread = threading.Thread(target=_watch_peer, args=(conn, me, peer), daemon=True, name=f"failfast-rank{peer}")
    _watchers.append(thread)
    thread.start()


def _read_line(conn):
    """The peer's first message: its rank, one line."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def watch(placement, rank=None, world=None, timeout=600.0):
    """Collective, once per process after `import oneflow`: connect this rank to rank 0 (see the
    module docstring). A single process: nothing."""
    import oneflow as flow

    from dlrm.distributed import broadcast_json

    rank = flow.env.get_rank() if rank is None else rank
    world = flow.env.get_world_size() if world is None else world
    if world <= 1:
        return
    server = None
    if rank == 0:
        server = socket.create_server(("", 0), backlog=world)
        server.settimeout(timeout)
    port = broadcast_json(server.getsockname()[1] if rank == 0 else None, placement)
    if rank == 0:
        for _ in range(world - 1):
            conn, _ = server.accept()
            conn.settimeout(None)
            peer = int(_read_line(conn) or -1)
            _conns.append(conn)
            _start_watcher(conn, 0, peer)
        server.close()
    else:
        conn = socket.create_connection((os.environ.get("MASTER_ADDR", "127.0.0.1"), port), timeout=timeout)
        conn.settimeout(None)
        conn.sendall(f"{rank}\n".encode())
        _conns.append(conn)
        _start_watcher(conn, rank, 0)


def run(main, argv=None):
    """Run an entry point's main(argv) and return its exit code. On a watched rank (see watch) a
    failure - a non-zero code or an exception, printed as a traceback - leaves at once with os._exit
    after telling rank 0, which then stops every other rank.

    An exception is handled inside its `except` block: leaving the block would release the failed
    frames' OneFlow objects, whose destructors wait for work that needs the other ranks (seen: a
    rank that raised at a step never got past that point)."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors, sys.exit
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        _end(code)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = e.code
        _end(code)
    except BaseException:  # noqa: B902 - a crash of any kind must still end the other ranks
        traceback.print_exc()
        code = 1
        _end(code)
    _end(code)
    return code


def _end(code):
    """Tell rank 0 (or the others) how this rank ended; a failed rank leaves here."""
    if not _conns or _ended.is_set():
        return
    if code:
        _failed.append(code)
    _ended.set()
    if code:
        _send(b"F")
        deadline = time.monotonic() + PEERS_LEAVE_S
        for thread in _watchers:  # each ends when its peer has left (or said it failed too)
            thread.join(max(0.0, deadline - time.monotonic()))
        _leave(None, code)
    _send(b"D")
