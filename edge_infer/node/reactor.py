"""pynetdicom's two reactor loops for an accepted association, waiting for work instead of
polling for it.

pynetdicom runs two threads per association. Its DUL thread checks the socket and the queue of
outgoing PDUs, and sleeps 1 ms whenever it finds nothing; its acceptor thread sleeps 1 ms before
each look at the queue of received DIMSE messages ("TODO: try and make this event based", in
pynetdicom's own source). Each idle association so wakes 2000 times a second, and each
instance waits up to 1 ms twice (the request, then the response). Here the same loops, with the
same steps in the same order, wait instead:

* the DUL thread in ``select()`` on the association's socket and a wake-up socket, written to
  when a PDU is queued to send or the thread is told to stop;
* the acceptor thread on an event set when a DIMSE message, an A-RELEASE or A-ABORT arrives,
  the DUL thread ends, or the association pauses the loop to release itself.

Timers (ARTIM, the network timeout) are still checked at least every :data:`TICK` seconds.
:func:`install` applies this to one association (from ``EVT_CONN_OPEN``, before its threads
start); it returns ``False``, leaving pynetdicom's loops, with a pynetdicom other than the
one these loops copy (:data:`VERIFIED`), or whose internals are not the expected ones.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
import types

TICK = 0.05  # s: the longest wait before timers are looked at again
#: the pynetdicom releases whose two loops these are (checked line by line): 3.0.x
VERIFIED = ("3.0.",)

LOGGER = logging.getLogger("pynetdicom.dul")
ASSOC_LOGGER = logging.getLogger("pynetdicom.association")


class _WakingQueue(queue.Queue):
    """A queue that calls ``wake()`` after each ``put``."""

    def __init__(self, wake) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _Checkpoint(threading.Event):
    """pynetdicom's ``_reactor_checkpoint``, whose ``clear()`` (the association pausing its
    acceptor loop to release itself, as ``release()`` does) also wakes that loop, so it
    reaches the pause at once rather than after its wait."""

    def __init__(self, wake) -> None:
        super().__init__()
        self._wake = wake

    def clear(self) -> None:
        super().clear()
        self._wake()


class _Waker:
    """A socket pair: ``set()`` makes the read end readable (for ``select()``); ``clear()``
    drains it. Safe to call after ``close()`` (a closed socket has no descriptor to reuse)."""

    def __init__(self) -> None:
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.w.setblocking(False)

    def set(self) -> None:
        try:
            self.w.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed (the loop has ended)
            pass

    def clear(self) -> None:
        try:
            while self.r.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.r.close()
        self.w.close()


def _supported(assoc) -> bool:
    import pynetdicom

    if not str(getattr(pynetdicom, "__version__", "")).startswith(VERIFIED):
        return False
    dul, dimse = getattr(assoc, "dul", None), getattr(assoc, "dimse", None)
    needed = ((dul, ("_target", "to_provider_queue", "to_user_queue", "event_queue", "state_machine",
                     "artim_timer", "_idle_timer", "_process_recv_primitive", "_is_transport_event",
                     "_kill_thread", "stop_dul")),
              (dimse, ("msg_queue",)),
              (assoc, ("_run_reactor", "_reactor_checkpoint", "_serve_request", "_kill", "_dul_ready", "acse")))
    return all(obj is not None and all(hasattr(obj, name) for name in names) for obj, names in needed)


def install(assoc) -> bool:
    """Give an accepted association (not yet started) the waiting loops; ``False`` if not possible."""
    if not _supported(assoc) or assoc.dul.is_alive():
        return False
    dul, dimse = assoc.dul, assoc.dimse
    waker = _Waker()
    ready = threading.Event()

    def kill_dul(self) -> None:  # pynetdicom's, and the loop is woken to see it
        self._kill_thread = True
        waker.set()
        ready.set()

    dul.to_provider_queue = _WakingQueue(waker.set)
    dul.to_user_queue = _WakingQueue(ready.set)
    dimse.msg_queue = _WakingQueue(ready.set)
    checkpoint = _Checkpoint(ready.set)
    if assoc._reactor_checkpoint.is_set():
        checkpoint.set()
    assoc._reactor_checkpoint = checkpoint
    dul._target = lambda: _dul_loop(dul, waker, ready)
    dul.stop_dul = types.MethodType(lambda self: _stop_dul(self, waker), dul)
    dul.kill_dul = types.MethodType(kill_dul, dul)
    assoc._run_reactor = lambda: _acceptor_loop(assoc, ready)
    return True


def _wait(dul, waker: _Waker) -> None:
    """Until the socket has data, a PDU is queued to send, the loop is told to stop, or TICK."""
    fds = [waker.r]
    sock = dul.socket
    raw = getattr(sock, "socket", None) if sock is not None and getattr(sock, "_is_connected", False) else None
    if raw is not None:
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return  # decrypted data select() cannot see
        fds.append(raw)
    try:
        readable, _, _ = select.select(fds, [], [], TICK)
    except (OSError, ValueError):  # the socket closed meanwhile: the next look reports it
        return
    if waker.r in readable:
        waker.clear()


def _dul_loop(dul, waker: _Waker, ready: threading.Event) -> None:
    """pynetdicom's ``DULServiceProvider.run_reactor``, waiting in :func:`_wait` where it slept."""
    try:
        dul._idle_timer.start()
        while True:
            if not dul.assoc._dul_ready.is_set():
                dul.assoc._dul_ready.set()
            if dul._kill_thread:
                break
            if dul.artim_timer.expired:
                dul.event_queue.put("Evt18")
            try:
                if dul._process_recv_primitive():
                    pass
                elif dul._is_transport_event():
                    dul._idle_timer.restart()
            except Exception as exc:  # as pynetdicom: abort, bypassing the state machine
                _abort(dul, exc)
                return
            try:
                event = dul.event_queue.get(block=False)
            except queue.Empty:
                _wait(dul, waker)
                continue
            dul.state_machine.do_action(event)
    finally:
        ready.set()  # the acceptor loop notices the DUL thread has ended
        waker.close()


def _abort(dul, exc: Exception) -> None:
    from pynetdicom.pdu import A_ABORT_RQ

    LOGGER.error("Exception in DUL.run(), aborting association")
    LOGGER.exception(exc)
    abort_pdu = A_ABORT_RQ()
    abort_pdu.source = 0x02
    abort_pdu.reason_diagnostic = 0x00
    try:
        dul.socket.send(abort_pdu.encode())
    finally:
        dul.assoc.is_aborted = True
        dul.assoc.is_established = False
        dul.assoc._kill = True
        dul._kill_thread = True


def _stop_dul(dul, waker: _Waker) -> bool:
    """pynetdicom's ``stop_dul``: stop the loop once in Sta1 (idle), woken rather than polled."""
    if dul.state_machine.current_state != "Sta1":
        return False
    dul._kill_thread = True
    waker.set()
    if threading.current_thread() is not dul:
        dul.join()
    return True


def _acceptor_loop(assoc, ready: threading.Event) -> None:
    """pynetdicom's ``Association._run_reactor`` (acceptor), waiting on ``ready`` where it slept."""
    from pynetdicom import evt

    assoc._is_paused = False
    while not assoc._kill:
        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()  # paused while the association itself sends (as pynetdicom)
        assoc._is_paused = False
        ready.clear()
        context_id, msg = assoc.dimse.get_msg(block=False)
        if msg:
            assoc._serve_request(msg, context_id)
            continue
        if assoc.is_established and assoc.acse.is_release_requested():
            assoc.acse.send_release(is_response=True)
            ASSOC_LOGGER.info("Association Released")
            assoc.is_released = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_RELEASED, {})
            assoc.kill()
            return
        if assoc.acse.is_aborted():
            ASSOC_LOGGER.info(
                "Association Aborted" + (" (A-P-ABORT)" if assoc.acse.is_aborted("a-p-abort") else ""))
            assoc.dul.receive_pdu(wait=False)
            assoc.is_aborted = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_ABORTED, {})
            assoc.kill()
            return
        if not assoc.dul.is_alive():
            assoc.kill()
            return
        if assoc.dul.idle_timer_expired():
            ASSOC_LOGGER.error("Network timeout reached")
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()
            assoc.kill()
            return
        ready.wait(TICK)
