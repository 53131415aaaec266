"""One persistent interactive vtysh session, the way an operator types into FRR.

Why a session and not `vtysh -c` per command: a one-shot vtysh costs 27-51 ms (it connects to
every daemon each time); a command over a live session answers in about a millisecond, which
is what lets vpnd poll BGP state often and shut a neighbor within the probe budget.

Commands are synchronised on vtysh's prompt (`host# `, `host(config-router)# `). vtysh prints
nothing for an accepted configuration command, so any output of one is FRR refusing or
warning (`% Unknown command`, `% Invalid input`, `% Ambiguous command`, `% Specify remote-as
...`, `BGP is already running; AS is ...`): it becomes `FrrCommandError` naming the command.
"`bgpd is not running`" and "connecting to bgpd...failed" mean FRR itself is gone:
`FrrUnavailable`, and the session is closed so the next call starts a fresh vtysh.

A command that does not answer within its timeout (FRR stopped, a daemon hung) leaves the
session out of step (its late output would be read as the next command's), so the vtysh is
killed and the caller sees `FrrTimeout`; the next call respawns it.

`VtyshSession` is blocking and thread-confined; `Vtysh` runs it in one dedicated thread so the
event loop never waits on FRR. Values put into commands come from the validated config only.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from vpnd import logs

log = logs.get("vpnd.frr")

PROMPT = re.compile(r"(?:^|\n)[^\s#]+(?:\([a-z0-9-]+\))?# $")
_UNAVAILABLE = re.compile(r"connecting to \w+\.\.\.failed|closing connection to \w+|"
                          r"error reading from \w+|(?:^|\n)\w+ is not running|"
                          r"Exiting: failed to connect to any daemons")
DEFAULT_TIMEOUT = 5.0


class FrrError(Exception):
    """Anything that went wrong talking to FRR."""


class FrrCommandError(FrrError):
    """FRR refused or warned about a command: the command and FRR's own words."""

    def __init__(self, command: str, output: str) -> None:
        self.command = command
        self.output = output
        super().__init__(f"FRR rejected {command!r}: {output}")


class FrrUnavailable(FrrError):
    """vtysh could not be started, or the FRR daemon needed is not running."""


class FrrTimeout(FrrUnavailable):
    def __init__(self, command: str, timeout: float) -> None:
        self.command = command
        super().__init__(f"no answer from FRR to {command!r} within {timeout:g} s")


@dataclass(frozen=True)
class VtyshTarget:
    """Which FRR to talk to: DaemonConfig's vtysh_path / frr_pathspace / frr_vty_socket."""

    vtysh: str = "/usr/bin/vtysh"
    pathspace: str | None = None
    vty_socket: str | None = None

    def argv(self) -> list[str]:
        args: list[str] = []
        if self.pathspace:
            args += ["-N", self.pathspace]
        if self.vty_socket:
            args += ["--vty_socket", self.vty_socket]
        return args

    @classmethod
    def from_config(cls, daemon) -> "VtyshTarget":
        return cls(daemon.vtysh_path, daemon.frr_pathspace, daemon.frr_vty_socket)


def _one_path(path: str) -> str:
    """`path` as pexpect's `command` when no arguments follow, so it names one file whatever it
    contains: then (only then) pexpect splits `command` like a shell line (a vtysh_path
    "/bin/sh -c ..." would run sh); a backslash before each character makes that split return
    the path unchanged."""
    return "".join("\\" + ch for ch in path)


@dataclass
class SessionStats:
    spawns: int = 0
    commands: int = 0
    errors: int = 0
    timeouts: int = 0
    latencies: list[float] = field(default_factory=list)   # seconds, the last 1000 commands


class VtyshSession:
    """A blocking vtysh over a pty. Not thread-safe: `Vtysh` confines it to one thread."""

    def __init__(self, target: VtyshTarget, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.target = target
        self.timeout = timeout
        self.stats = SessionStats()
        self._child = None

    @property
    def alive(self) -> bool:
        return self._child is not None and self._child.isalive()

    def open(self) -> None:
        import pexpect

        self.close()
        env = {k: v for k, v in os.environ.items() if k != "VTYSH_PAGER"}
        env["TERM"] = "dumb"       # no escape sequences from readline
        try:
            args = self.target.argv()
            child = pexpect.spawn(self.target.vtysh if args else _one_path(self.target.vtysh),
                                  args, env=env, encoding="utf-8", codec_errors="replace",
                                  echo=False, dimensions=(500, 10000), timeout=self.timeout)
        except pexpect.ExceptionPexpect as err:
            reason = ("not an executable file (daemon.vtysh_path names one file)"
                      if "not found or was not executable" in str(err) else str(err))
            raise FrrUnavailable(f"cannot start {self.target.vtysh!r}: {reason}") from None
        child.delaybeforesend = None        # pexpect's default 50 ms per line
        self._child = child
        try:
            child.expect(PROMPT, timeout=self.timeout)
        except pexpect.EOF:
            out = _clean(child.before or "")
            self.close()
            raise FrrUnavailable(f"vtysh exited at start: {out or 'no output'}") from None
        except pexpect.TIMEOUT:
            self.close()
            raise FrrTimeout("<start>", self.timeout) from None
        self.stats.spawns += 1

    def close(self) -> None:
        if self._child is not None:
            try:
                self._child.close(force=True)
            except Exception:  # noqa: BLE001 - a dead pty is closed enough
                pass
            self._child = None

    def run(self, command: str, *, timeout: float | None = None, config: bool = False) -> str:
        """Send one line, wait for the prompt, return the output. config=True: any output is
        FRR objecting. Respawns vtysh first when it is not running."""
        import pexpect

        if "\n" in command or "\r" in command:
            raise ValueError(f"one line per command: {command!r}")
        if not self.alive:
            self.open()
        child = self._child
        t0 = time.perf_counter()
        child.sendline(command)
        try:
            child.expect(PROMPT, timeout=timeout or self.timeout)
        except pexpect.TIMEOUT:
            self.stats.timeouts += 1
            self.close()            # out of step: its late answer would be the next one's
            raise FrrTimeout(command, timeout or self.timeout) from None
        except pexpect.EOF:
            self.close()
            raise FrrUnavailable(f"vtysh exited during {command!r}") from None
        self.stats.commands += 1
        lat = self.stats.latencies
        lat.append(time.perf_counter() - t0)
        if len(lat) > 1000:
            del lat[:500]
        out = _clean(child.before)
        if _UNAVAILABLE.search(out):
            self.close()            # a fresh vtysh reconnects to restarted daemons cleanly
            raise FrrUnavailable(f"FRR not running ({command!r}: {out.splitlines()[-1]})")
        if (config and out) or out.startswith("%"):
            self.stats.errors += 1
            raise FrrCommandError(command, out)
        return out

    def configure(self, commands: list[str]) -> None:
        """`configure terminal`, the commands in order, `end`. Stops at the first refusal
        (later commands could land in the wrong context) and still leaves config mode."""
        self.run("configure terminal", config=True)
        try:
            for c in commands:
                self.run(c, config=True)
        finally:
            if self.alive:
                try:
                    self.run("end", config=True)
                except FrrError:
                    self.close()


def _clean(text: str) -> str:
    return text.replace("\r", "").strip("\n")


class Vtysh:
    """`VtyshSession` behind one dedicated thread: awaitable, one command at a time, and the
    event loop never blocks on FRR. `on_error` sees every FrrError (metrics, logs)."""

    def __init__(self, target: VtyshTarget, *, timeout: float = DEFAULT_TIMEOUT,
                 on_error: Callable[[FrrError], None] | None = None) -> None:
        self.session = VtyshSession(target, timeout=timeout)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vtysh")
        self._on_error = on_error

    async def _call(self, fn, *args, **kw):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kw))
        except FrrError as err:
            if self._on_error is not None:
                self._on_error(err)
            raise

    async def open(self) -> None:
        await self._call(self.session.open)

    async def run(self, command: str, *, timeout: float | None = None) -> str:
        return await self._call(self.session.run, command, timeout=timeout)

    async def show_json(self, command: str, *, timeout: float | None = None):
        """A `show ... json` command, parsed; FrrError when FRR's answer is not JSON."""
        import json

        out = await self.run(command, timeout=timeout)
        try:
            return json.loads(out) if out.strip() else {}
        except ValueError:
            err = FrrCommandError(command, f"not JSON: {out[:200]}")
            if self._on_error is not None:
                self._on_error(err)
            raise err from None

    async def configure(self, commands: list[str]) -> None:
        await self._call(self.session.configure, commands)

    @property
    def alive(self) -> bool:
        return self.session.alive

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.session.close)
        self._pool.shutdown(wait=False)
