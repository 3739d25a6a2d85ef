"""``trio-accept serve --workers N``: real processes sharing a real port, real signals."""

from __future__ import annotations

import datetime
import os
import re
import signal
import ssl
from pathlib import Path

import pytest
import trio
import trustme
from clitools import (
    COMMAND,
    PROCESS_DEADLINE,
    Serve,
    connect,
    echo_line,
    listening_socket,
    notify_socket,
    pid_alive,
    plain_http,
    read_all,
    scrape,
    scrape_until,
    serve,
    socket_activated,
    trusting,
)
from helpers import replace_certificate

from trio_accept._workers import (
    FIRST_RESTART_DELAY,
    HEALTHY_UPTIME,
    MAX_RESTART_DELAY,
    describe_exit,
    restart_delay,
)

#: Connections a test may make to see every worker answer at least once. The kernel
#: spreads connections over SO_REUSEPORT sockets by a hash of the client's address and
#: port, so each new connection is a fresh coin toss: 2**-99 for one worker never to
#: answer 100 tosses.
ENOUGH_CONNECTIONS = 100


def children(pid: int) -> set[int]:
    """The pids of a process's children, from /proc."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def worker_pids(server: Serve) -> list[int]:
    match = re.fullmatch(r"workers: (\d+) \(pids (.*)\)", server.banner_line("workers:"))
    assert match is not None
    pids = [int(pid) for pid in match.group(2).split(", ")]
    assert len(pids) == int(match.group(1))
    return pids


def who_answers(port: int, context: ssl.SSLContext, wanted: set[int]) -> tuple[set[int], int]:
    """Connect (pid handler) until every pid in ``wanted`` has answered; returns the pids
    that answered and how many connections it took."""
    seen: set[int] = set()
    for count in range(1, ENOUGH_CONNECTIONS + 1):
        seen.add(int(read_all(port, context)))
        if seen >= wanted:
            return seen, count
    return seen, ENOUGH_CONNECTIONS


def test_restart_delays() -> None:
    assert restart_delay(0.0, uptime=0.1) == FIRST_RESTART_DELAY
    assert restart_delay(FIRST_RESTART_DELAY, uptime=0.1) == 2 * FIRST_RESTART_DELAY
    assert restart_delay(MAX_RESTART_DELAY, uptime=0.1) == MAX_RESTART_DELAY
    assert restart_delay(MAX_RESTART_DELAY, uptime=HEALTHY_UPTIME) == 0.0
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exited with status 3"


async def test_workers_share_the_port_are_restarted_and_all_stop(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    arguments = ["--dev-ca", str(tmp_path), "--workers", "2", "--handler", "cli_handlers:pid"]
    async with serve(arguments, env={"TMPDIR": str(scratch)}) as server:
        context = trusting(tmp_path / "dev-ca.pem")
        supervisor = server.process.pid
        first, second = worker_pids(server)
        assert children(supervisor) == {first, second}
        # Both serve, on the one port.
        seen, _ = await trio.to_thread.run_sync(who_answers, server.port, context, {first, second})
        assert seen == {first, second}
        assert [path.name.startswith("trio-accept-") for path in scratch.iterdir()] == [True]

        # A worker killed is logged and replaced; while it is down the other one serves.
        os.kill(first, signal.SIGKILL)
        await server.logged(
            f"worker 0 (pid {first}) killed by SIGKILL; restarting it in {FIRST_RESTART_DELAY:g} s"
        )
        ready = await server.logged("worker 0 (pid")
        while "ready" not in ready:
            ready = await server.logged("worker 0 (pid")
        match = re.search(r"worker 0 \(pid (\d+)\) ready", ready)
        assert match is not None
        replacement = int(match.group(1))
        assert replacement not in {first, second}
        assert children(supervisor) == {replacement, second}
        seen, _ = await trio.to_thread.run_sync(
            who_answers, server.port, context, {replacement, second}
        )
        assert seen == {replacement, second}

        # Dying young again: the delay doubles (a crash loop does not spin).
        os.kill(replacement, signal.SIGKILL)
        await server.logged(
            f"worker 0 (pid {replacement}) killed by SIGKILL; restarting it in "
            f"{2 * FIRST_RESTART_DELAY:g} s"
        )
        await server.logged("ready")
        third = children(supervisor) - {second}
        assert len(third) == 1

        status, log = await server.stop(signal.SIGTERM)
    assert status == 0
    assert "SIGTERM: shutting down 2 workers gracefully" in log
    assert log.count("shutting down: 0 handshakes shed") == 2  # each worker, gracefully
    for pid in (first, second, replacement, *third):
        assert not pid_alive(pid)
    assert list(scratch.iterdir()) == []  # the supervisor's directory is gone
    assert "Traceback" not in log


@pytest.mark.parametrize("inherited", ["LISTEN_FDS", "--fd"])
async def test_workers_serve_an_inherited_socket_whatever_the_file_says(
    tmp_path: Path, inherited: str
) -> None:
    # The documented socket-activated unit: a configuration file with host and port (it
    # also serves a unit that binds) and workers. The inherited socket wins; this
    # address could not even be bound here.
    config = tmp_path / "trio-accept.toml"
    config.write_text('host = "192.0.2.1"\nport = 443\nbacklog = 16\n')
    arguments = ["--config", str(config), "--dev-ca", str(tmp_path), "--workers", "2"]
    arguments += ["--handler", "cli_handlers:pid"]
    with listening_socket() as sock:
        fd, port = sock.fileno(), sock.getsockname()[1]
        command = socket_activated(fd) if inherited == "LISTEN_FDS" else COMMAND
        if inherited == "--fd":
            arguments += ["--fd", str(fd)]
        async with serve(arguments, command=command, port=(), pass_fds=[fd]) as server:
            assert server.port == port
            pids = worker_pids(server)  # both workers are ready: the banner waits for them
            context = trusting(tmp_path / "dev-ca.pem")
            for _ in range(3):
                assert int(await trio.to_thread.run_sync(read_all, port, context)) in pids
            status, log = await server.stop()
    assert status == 0
    source = "LISTEN_FDS" if inherited == "LISTEN_FDS" else "fd (--fd)"
    ignored = "host (--host), port (--port), backlog (--backlog) ignored"
    # Said once, by the supervisor, not by every worker.
    assert log.count(f"serving on the inherited sockets of {source}: {ignored}") == 1
    assert "do not apply" not in log
    assert "Traceback" not in log


async def test_sd_notify_speaks_for_every_worker(tmp_path: Path) -> None:
    async with notify_socket(tmp_path) as (path, next_message):
        arguments = ["--dev-ca", str(tmp_path), "--workers", "2"]
        async with serve(arguments, env={"NOTIFY_SOCKET": path}) as server:
            # Only the supervisor speaks to systemd, once both workers are ready (the
            # banner is printed at that moment too).
            assert await next_message() == ["READY=1", "STATUS=serving with 2 workers"]
            await trio.to_thread.run_sync(plain_http, server.port)
            await server.logged("the client sent plain HTTP to a TLS port")
            # Each worker reports its stats to the supervisor, which shows their sum.
            server.process.send_signal(signal.SIGUSR1)
            status = await next_message()
            while status[0].startswith("STATUS=stats of 1 worker:"):
                status = await next_message()
            assert status == [
                "STATUS=stats of 2 workers: 1 accepted, 0 handshaking, 0 completed, "
                "1 failed (plain-http 1), 0 active, 0 closed, 0 idle-closed, "
                "0 handler errors, 0 accept errors"
            ]
            server.process.send_signal(signal.SIGHUP)
            reloading = await next_message()
            assert reloading[0] == "RELOADING=1"
            assert re.fullmatch(r"MONOTONIC_USEC=\d+", reloading[1])
            assert await next_message() == ["READY=1"]  # once both workers reloaded
            for _ in range(2):  # it came after both workers had reloaded
                await server.logged("certificates reloaded")
            server.process.send_signal(signal.SIGTERM)
            assert await next_message() == ["STOPPING=1"]
            with trio.fail_after(PROCESS_DEADLINE):
                assert await server.process.wait() == 0


async def test_sighup_reloads_every_worker(tmp_path: Path) -> None:
    ca = trustme.CA()
    old, new = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    replace_certificate(old, cert, key)
    arguments = ["--cert", str(cert), "--key", str(key), "--workers", "2"]
    async with serve([*arguments, "--handler", "cli_handlers:pid"]) as server:
        pids = worker_pids(server)
        replace_certificate(new, cert, key)
        server.process.send_signal(signal.SIGHUP)
        reloaded = {await server.logged("certificates reloaded") for _ in pids}
        assert {int(re.findall(r"worker \d \[(\d+)\]", line)[0]) for line in reloaded} == set(pids)
        status, log = await server.stop()
    assert status == 0
    assert "SIGHUP: reloading the certificates in every worker" in log


async def test_a_key_every_user_can_read_is_reported_once(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    replace_certificate(trustme.CA().issue_cert("localhost"), cert, key)
    key.chmod(0o644)
    arguments = ["--cert", str(cert), "--key", str(key), "--workers", "2"]
    async with serve(arguments) as server:
        status, log = await server.stop()
    assert status == 0
    # By the supervisor, which checked the settings; not again by each worker.
    assert log.count("the private key is readable by every user (mode 0644)") == 1


async def test_a_worker_that_fails_to_start_stops_the_start(tmp_path: Path) -> None:
    arguments = ["--dev-ca", str(tmp_path), "--workers", "2"]
    arguments += ["--handler", "cli_worker_fails:handler"]
    from clitools import running  # noqa: PLC0415

    argv = [*COMMAND, "serve", "--port", "0", *arguments]
    async with running(argv) as (process, stdout, stderr):
        with trio.fail_after(PROCESS_DEADLINE):
            status = await process.wait()
            log = await stderr.read_all()
            out = await stdout.read_all()
    assert status == 1
    assert "this module refuses to load in a worker" in log
    match = re.search(r"worker (\d) \(pid (\d+)\) exited with status 2 before it was ready", log)
    assert match is not None
    assert "TLS" not in out  # no banner: it never served
    for pid in re.findall(r"\(pid (\d+)\) started", log):
        assert not pid_alive(int(pid))


async def test_metrics_sum_every_worker(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    ca = trustme.CA()
    expires = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(
        days=30
    )
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    replace_certificate(ca.issue_cert("localhost", not_after=expires), cert, key)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    arguments = ["--cert", str(cert), "--key", str(key), "--workers", "2"]
    arguments += ["--metrics", "127.0.0.1:0", "--handler", "cli_handlers:pid"]
    async with serve(arguments, env={"TMPDIR": str(scratch)}) as server:
        url = server.banner_line("metrics:").split()[-1]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url)
        pids = worker_pids(server)
        seen, connections = await trio.to_thread.run_sync(
            who_answers, server.port, context, set(pids)
        )
        assert seen == set(pids)
        await trio.to_thread.run_sync(plain_http, server.port)

        completed = ("trio_accept_handshakes_total", (("reason", ""), ("result", "completed")))
        plain = ("trio_accept_handshakes_total", (("reason", "plain-http"), ("result", "failed")))
        samples, before = await scrape_until(
            url, lambda s: s.get(completed) == connections and s.get(plain) == 1
        )
        assert samples[("trio_accept_connections_accepted_total", ())] == connections + 1
        assert samples[("trio_accept_handshake_duration_seconds_count", ())] == connections
        assert samples[("trio_accept_connections_active", ())] == 0
        default = (("certificate", "default"),)
        assert samples[("trio_accept_certificate_expiry_timestamp_seconds", default)] == (
            expires.timestamp()
        )
        left = samples[("trio_accept_certificate_expiry_seconds", default)]
        assert 29 * 86400 < left <= expires.timestamp() - before

        # A worker that dies takes nothing from the counters: its files stay in the sum
        # (prometheus-client's multiprocess mode), only its gauges are dropped.
        os.kill(pids[0], signal.SIGKILL)
        await server.logged(f"worker 0 (pid {pids[0]}) killed by SIGKILL; restarting it")
        while "ready" not in await server.logged("worker 0 (pid"):
            pass
        samples = await trio.to_thread.run_sync(scrape, url)
        assert samples[completed] == connections
        assert samples[plain] == 1
        assert samples[("trio_accept_connections_accepted_total", ())] == connections + 1
        assert samples[("trio_accept_handshake_duration_seconds_count", ())] == connections
        assert samples[("trio_accept_connections_active", ())] == 0
        status, log = await server.stop()
    assert status == 0
    assert list(scratch.iterdir()) == []
    assert "Traceback" not in log


def uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uids of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(number) for number in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def running_pid(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    arguments = ["--dev-ca", str(tmp_path), "--workers", "2"]
    async with serve(arguments, env={"TMPDIR": str(scratch)}) as server:
        pids = worker_pids(server)
        server.process.kill()  # SIGKILL: no chance to stop anyone
        for _ in pids:
            await server.logged("the supervisor is gone: shutting down")
        # They are not our children, but a pidfd says when they exit all the same.
        with trio.fail_after(PROCESS_DEADLINE):
            for pid in pids:
                try:
                    pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue  # gone already
                try:
                    await trio.lowlevel.wait_readable(pidfd)
                finally:
                    os.close(pidfd)
        assert not any(running_pid(pid) for pid in pids)
        log = await server.stderr.read_all()
    assert log.count("stopped; stats:") == 2


async def test_a_second_signal_stops_the_workers_at_once(tmp_path: Path) -> None:
    arguments = ["--dev-ca", str(tmp_path), "--workers", "2", "--shutdown-grace", "600"]
    arguments += ["--handler", "cli_handlers:stubborn_echo"]
    async with serve(arguments) as server:
        pids = worker_pids(server)
        context = trusting(tmp_path / "dev-ca.pem")
        with await trio.to_thread.run_sync(connect, server.port, context) as tls:
            assert await trio.to_thread.run_sync(echo_line, tls, b"hi\n") == b"hi\n"
            server.process.send_signal(signal.SIGTERM)
            await server.logged("SIGTERM: shutting down 2 workers gracefully")
            for _ in pids:  # each worker got it, once
                await server.logged("SIGTERM: shutting down gracefully (again to stop at once)")
            # The worker holding the connection waits for its handler (for 600 s) ...
            assert server.process.returncode is None
            status, log = await server.stop(signal.SIGTERM)  # ... until a second signal.
    assert status == 0
    assert "SIGTERM again: stopping the workers now" in log
    assert "SIGTERM again: stopping now" in log
    for pid in pids:
        assert not pid_alive(pid)


async def test_a_worker_stuck_past_its_grace_is_killed(tmp_path: Path) -> None:
    arguments = ["--dev-ca", str(tmp_path), "--workers", "2", "--handler", "cli_handlers:blocking"]
    arguments += ["--shutdown-grace", "0", "--close-timeout", "0.1"]
    async with serve(arguments) as server:
        pids = worker_pids(server)
        context = trusting(tmp_path / "dev-ca.pem")
        with await trio.to_thread.run_sync(connect, server.port, context):
            # The stuck worker no longer reads signals; the other stops at once.
            status, log = await server.stop(signal.SIGTERM)
    assert status == 0
    assert re.search(r"worker \d \(pid \d+\) is still running after 5\.1 s: killing it", log)
    assert "killed by SIGKILL" in log
    for pid in pids:
        assert not pid_alive(pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_workers_switch_user_and_still_write_metrics(tmp_path: Path) -> None:
    import pwd  # noqa: PLC0415

    pytest.importorskip("prometheus_client")
    nobody = pwd.getpwnam("nobody")
    arguments = ["--dev-ca", str(tmp_path), "--workers", "2", "--user", "nobody"]
    arguments += ["--metrics", "127.0.0.1:0", "--handler", "cli_handlers:pid"]
    # Coverage (when measuring) would make the workers write their data into this
    # checkout after they became nobody, and fail at exit: not measured here.
    async with serve(arguments, env={"COVERAGE_PROCESS_CONFIG": ""}) as server:
        pids = worker_pids(server)
        for pid in pids:
            assert uids(pid) == [nobody.pw_uid] * 4
        assert uids(server.process.pid) == [0] * 4
        context = trusting(tmp_path / "dev-ca.pem")
        seen, connections = await trio.to_thread.run_sync(
            who_answers, server.port, context, set(pids)
        )
        assert seen == set(pids)
        url = server.banner_line("metrics:").split()[-1]
        completed = ("trio_accept_handshakes_total", (("reason", ""), ("result", "completed")))
        await scrape_until(url, lambda samples: samples.get(completed) == connections)
        status_code, log = await server.stop()
    assert status_code == 0
    assert "workers switch to uid" in log
    assert "Traceback" not in log
