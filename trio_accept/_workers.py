"""``trio-accept serve --workers N``: N worker processes on one port, supervised.

One Python process serves on one core (the GIL); a TLS server spends most of its CPU in
handshakes, so more cores take more processes. The supervisor starts N copies of the
same ``serve`` command, each told its worker number, and each binds the port itself with
``SO_REUSEPORT``: the kernel spreads new connections among their listening sockets, and
a worker that dies takes only its own accept queue with it. (With an inherited socket --
``--fd`` or systemd's ``LISTEN_FDS`` -- the workers share that one socket instead.)

The supervisor's duties, and how each is done:

- **Keep the port.** With ``--port 0`` the supervisor picks the port. It holds a socket
  bound to the address, never listening (so never accepting), for its whole life: the
  port cannot be taken while a worker restarts.
- **Know when workers are up.** Workers speak the systemd notification protocol
  (:mod:`._systemd`) to a datagram socket of the supervisor's, which learns each
  sender's pid from the kernel (``SO_PASSCRED``). The banner is printed, and systemd
  told ``READY=1``, once every worker is ready; a worker that exits before it was ever
  ready stops the whole start (it printed why), and so do workers not all ready within
  :data:`STARTUP_TIMEOUT`.
- **Speak for the workers.** systemd hears from the supervisor alone: ``READY=1``
  (above), ``RELOADING=1`` then ``READY=1`` once every worker reloaded after a SIGHUP,
  ``STOPPING=1``, and a ``STATUS=`` line -- the sum of the workers' stats each time one
  reports them (:mod:`._stats`).
- **Restart the dead.** A worker that exits unasked is logged and restarted, at once if it
  had been running for :data:`HEALTHY_UPTIME`, else after a delay that doubles from
  :data:`FIRST_RESTART_DELAY` up to :data:`MAX_RESTART_DELAY`: a crash loop does not spin.
- **Pass signals on.** SIGINT/SIGTERM, SIGHUP and SIGUSR1 are forwarded to every worker,
  which does what a single process does with them: a first SIGTERM shuts down
  gracefully, a second stops at once, SIGHUP reloads the certificates. Workers run in a
  process group of their own, so a terminal's Ctrl-C reaches only the supervisor (and
  every worker then exactly once).
- **Leave nothing behind.** The supervisor waits for every worker; a worker that outlives
  its shutdown grace by :data:`KILL_MARGIN` is killed. Workers hold the read end of a
  pipe whose write end only the supervisor has: if the supervisor dies, even by SIGKILL,
  the pipe reads EOF and the workers shut down by themselves.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import trio

from ._stats import STATS_FIELD, StatsSum, decode_stats, stats_line
from ._systemd import notify, reloading_fields

logger = logging.getLogger("trio_accept")

#: A worker that ran this long before dying was healthy: restart it at once.
HEALTHY_UPTIME: Final = 10.0
#: The first delay before restarting a worker that died young; it doubles each time.
FIRST_RESTART_DELAY: Final = 0.5
#: The longest delay between restarts of a worker that keeps dying.
MAX_RESTART_DELAY: Final = 30.0
#: Seconds a worker may take, past its shutdown grace and close_notify time, before
#: the supervisor kills it.
KILL_MARGIN: Final = 5.0
#: Seconds to wait for every worker's ``READY=1`` after a SIGHUP before telling systemd
#: that the reload is over anyway.
RELOAD_WAIT: Final = 30.0
#: Seconds the workers get to be ready at startup (loading certificates, binding); past
#: it, the start is given up, as if a worker had failed.
STARTUP_TIMEOUT: Final = 60.0
#: The largest notification datagram read (systemd's own limit is similar).
NOTIFY_SIZE: Final = 4096
#: ``struct ucred`` (pid, uid, gid), as the kernel attaches it with ``SO_PASSCRED``.
UCRED: Final = struct.Struct("iII")
#: The signals the supervisor passes on to every worker.
FORWARDED: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


def describe_exit(status: int) -> str:
    """``exited with status 3`` / ``killed by SIGKILL``, from a returncode."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


def restart_delay(previous: float, uptime: float) -> float:
    """How long to wait before restarting a worker that ran ``uptime`` seconds and was
    last restarted after ``previous`` seconds."""
    if uptime >= HEALTHY_UPTIME:
        return 0.0
    return min(MAX_RESTART_DELAY, max(FIRST_RESTART_DELAY, previous * 2))


@final
@dataclass(eq=False)
class _Slot:
    """One worker position: the process in it now, and its history."""

    index: int
    process: trio.Process | None = None
    started_at: float = 0.0
    ready: bool = False  # the process in the slot now said READY=1
    ever_ready: bool = False  # some process in this slot did
    delay: float = 0.0
    reloaded: trio.Event | None = None


@final
class Supervisor:
    """Runs and watches the workers (see the module notes).

    Args:
        count: How many workers.
        command: The command line of worker ``index``.
        pass_fds: File descriptors every worker inherits (the lifeline's read end is
            added).
        env: The workers' environment (``NOTIFY_SOCKET`` is set to the supervisor's).
        state_directory: A private directory for the notification socket.
        stop_timeout: Seconds a worker may take to shut down gracefully before it is
            killed.
        on_exit: Called with the pid of every worker that ended.
        on_ready: Called once, when every worker is ready at startup.
    """

    def __init__(
        self,
        *,
        count: int,
        command: Callable[[int, int], list[str]],
        pass_fds: Sequence[int],
        env: Mapping[str, str],
        state_directory: Path,
        stop_timeout: float,
        on_exit: Callable[[int], object] | None = None,
        on_ready: Callable[[Sequence[int]], object] | None = None,
    ) -> None:
        self._slots = [_Slot(index) for index in range(count)]
        self._command = command
        self._pass_fds = list(pass_fds)
        self._env = dict(env)
        self._notify_path = state_directory / "notify"
        self._stop_timeout = stop_timeout
        self._on_exit = on_exit
        self._on_ready = on_ready
        self._stopping = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._failed: str | None = None
        self._announced = False
        self._stats = StatsSum()
        #: Workers restarted so far.
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        """The pids of the workers running now."""
        return [slot.process.pid for slot in self._slots if slot.process is not None]

    async def run(self) -> int:
        """Run the workers until a signal stops them; returns the exit status."""
        lifeline_read, lifeline_write = os.pipe()
        self._pass_fds.append(lifeline_read)
        notifications = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            notifications.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            await notifications.bind(str(self._notify_path))
            # Writable by the workers even after they switch user: the directory (the
            # supervisor's, 0700, given to that user) is what keeps others out.
            os.chmod(self._notify_path, 0o666)
            self._env["NOTIFY_SOCKET"] = str(self._notify_path)
            with trio.open_signal_receiver(*FORWARDED) as signals:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._receive_notifications, notifications)
                    nursery.start_soon(self._watch_signals, signals, nursery)
                    nursery.start_soon(self._startup_deadline)
                    async with trio.open_nursery() as workers:
                        for slot in self._slots:
                            workers.start_soon(self._keep_running, slot, lifeline_read)
                    nursery.cancel_scope.cancel()  # every worker is gone: stop listening
        finally:
            notifications.close()
            os.close(lifeline_read)
            os.close(lifeline_write)
        if self._failed is not None:
            logger.error("%s", self._failed)
            return 1
        logger.info("stopped")
        return 0

    # -- the workers ---------------------------------------------------------------

    async def _keep_running(self, slot: _Slot, lifeline: int) -> None:
        while not self._stopping.is_set():
            slot.ready = False
            process = await trio.lowlevel.open_process(
                self._command(slot.index, lifeline),
                stdin=subprocess.DEVNULL,
                env=self._env,
                pass_fds=self._pass_fds,
                process_group=0,
            )
            slot.process, slot.started_at = process, trio.current_time()
            logger.info("worker %d (pid %d) started", slot.index, process.pid)
            if self._stopping.is_set():  # stopped while it was being started
                process.send_signal(signal.SIGTERM)
            status = await process.wait()
            slot.process, slot.ready = None, False
            self._stats.retire(process.pid)
            if self._on_exit is not None:
                self._on_exit(process.pid)
            if self._stopping.is_set():
                logger.info(
                    "worker %d (pid %d) %s", slot.index, process.pid, describe_exit(status)
                )
                return
            if not slot.ever_ready:
                self._fail(
                    f"worker {slot.index} (pid {process.pid}) {describe_exit(status)} before "
                    "it was ready; stopping"
                )
                return
            slot.delay = restart_delay(slot.delay, trio.current_time() - slot.started_at)
            self.restarts += 1
            logger.error(
                "worker %d (pid %d) %s; restarting it%s",
                slot.index,
                process.pid,
                describe_exit(status),
                f" in {slot.delay:g} s" if slot.delay else "",
            )
            with trio.move_on_after(slot.delay):
                await self._stopping.wait()

    async def _startup_deadline(self) -> None:
        await trio.sleep(STARTUP_TIMEOUT)
        if not self._announced:
            self._fail(f"the workers were not all ready after {STARTUP_TIMEOUT:g} s; stopping")

    def _fail(self, message: str) -> None:
        if self._failed is None:
            self._failed = message
        self._stop(signal.SIGTERM)

    def _stop(self, signum: int) -> None:
        first = not self._stopping.is_set()
        self._stopping.set()
        self._forward(signum)
        if first:
            notify("STOPPING=1")
            assert self._nursery is not None
            self._nursery.start_soon(self._kill_stragglers)

    def _forward(self, signum: int) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signum)

    async def _kill_stragglers(self) -> None:
        await trio.sleep(self._stop_timeout + KILL_MARGIN)
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                logger.error(
                    "worker %d (pid %d) is still running after %g s: killing it",
                    slot.index,
                    slot.process.pid,
                    self._stop_timeout + KILL_MARGIN,
                )
                slot.process.kill()

    # -- signals and notifications ------------------------------------------------

    async def _watch_signals(self, signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                if not self._stopping.is_set():
                    logger.info("SIGHUP: reloading the certificates in every worker")
                    nursery.start_soon(self._reload)
                continue
            if signum == signal.SIGUSR1:
                self._forward(signum)
                continue
            if self._stopping.is_set():
                logger.warning("%s again: stopping the workers now", name)
                self._forward(signum)
                continue
            logger.info(
                "%s: shutting down %d workers gracefully (again to stop at once)",
                name,
                len(self.pids),
            )
            self._stop(signum)

    async def _reload(self) -> None:
        notify(*reloading_fields())
        waiting: list[trio.Event] = []
        for slot in self._slots:
            if slot.process is not None and slot.ready:
                slot.reloaded = trio.Event()
                waiting.append(slot.reloaded)
        self._forward(signal.SIGHUP)
        with trio.move_on_after(RELOAD_WAIT):
            for event in waiting:
                await event.wait()
        notify("READY=1")

    async def _receive_notifications(self, sock: trio.socket.SocketType) -> None:
        credentials_size = socket.CMSG_SPACE(UCRED.size)
        while True:
            data, ancillary, _, _ = await sock.recvmsg(NOTIFY_SIZE, credentials_size)
            pid = None
            for level, kind, payload in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                    pid = UCRED.unpack(payload[: UCRED.size])[0]
            slot = next(
                (s for s in self._slots if s.process is not None and s.process.pid == pid), None
            )
            if slot is None:
                continue  # a worker that is gone already, or a stranger
            fields = data.decode(errors="replace").split("\n")
            if "READY=1" in fields:
                if not slot.ready:
                    logger.info("worker %d (pid %d) ready", slot.index, pid)
                slot.ready = slot.ever_ready = True
                if slot.reloaded is not None:
                    slot.reloaded.set()
                self._announce_if_ready()
            for field in fields:
                name, _, value = field.partition("=")
                if name == STATS_FIELD:
                    self._stats_reported(slot, value)

    def _stats_reported(self, slot: _Slot, report: str) -> None:
        """A worker's stats: systemd's status shows the sum of every worker's."""
        assert slot.process is not None
        try:
            stats = decode_stats(report)
        except ValueError as exc:
            logger.warning("worker %d (pid %d): %s", slot.index, slot.process.pid, exc)
            return
        self._stats.update(slot.process.pid, stats)
        reporting = self._stats.reporting
        label = f"stats of {reporting} worker{'s' if reporting != 1 else ''}"
        notify(f"STATUS={stats_line(self._stats.total(), label=label)}")

    def _announce_if_ready(self) -> None:
        """The first time every worker is ready: the banner, and READY=1 to systemd."""
        if self._announced or self._stopping.is_set():
            return
        if all(slot.ready for slot in self._slots):
            self._announced = True
            if self._on_ready is not None:
                self._on_ready(self.pids)
            notify("READY=1", f"STATUS=serving with {len(self._slots)} workers")
