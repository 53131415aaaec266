"""The control socket: how `vpnd status`, `failover`, `drain`, `undrain` and `psk rotate` reach
the daemon.

Protocol: a unix stream socket; each request is one JSON object on one line, each reply one
JSON object on one line (`{"ok": true, ...}` or `{"ok": false, "code": ..., "error": ...}`);
several requests may share a connection. The socket is created mode 0600 (root only), and
the peer's uid is checked again with SO_PEERCRED: only root (or the daemon's own user) may
run a command that changes anything, in case someone loosens the file's mode.

Whatever a client sends, the daemon's state changes only through a well-formed, validated
command: garbage gets an error reply, a request longer than MAX_REQUEST bytes or one that
does not arrive within the read timeout gets an error and the connection closed, so a slow
or hostile client never holds anything but its own connection.

The server takes plain callables (`status() -> dict`, `apply(event) -> awaitable`); the
daemon supplies them, so nothing here knows the daemon.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

from vpnd.core.events import Drain, ForceFailover, TunnelKey, Undrain

MAX_REQUEST = 64 * 1024         # bytes of one request line, newline included
READ_TIMEOUT = 5.0              # seconds a client has to send one complete request (one
                                # deadline from accept or the previous reply; blank lines
                                # do not restart it)
APPLY_TIMEOUT = 10.0            # seconds the reconciler has to process an operator command
MAX_CLIENTS = 32                # concurrent connections; more are told "busy" and closed

# name -> (fields it takes, whether it changes the daemon)
COMMANDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "status": ((), False),
    "failover": (("connection", "to"), True),
    "drain": (("connection", "tunnel"), True),
    "undrain": (("connection", "tunnel"), True),
    # the new key is never sent here: the daemon reads the configured one (vpnd.run.rotation)
    "psk_rotate": (("connection", "tunnel", "abort"), True),
}


class ControlError(Exception):
    """The control socket cannot be served (path taken by a live daemon, not a socket, ...)."""


class Refused(Exception):
    """A request the daemon answers with an error reply; `code` is for scripts."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- the server --------------------------------------------------------------------------

class ControlServer:
    def __init__(self, path: str, *, status: Callable[[], dict],
                 apply: Callable[[object], Awaitable[None]],
                 max_request: int = MAX_REQUEST, read_timeout: float = READ_TIMEOUT,
                 apply_timeout: float = APPLY_TIMEOUT, max_clients: int = MAX_CLIENTS,
                 admin_uids: frozenset[int] | None = None,
                 rotate: Callable[[str, str | None, bool], Awaitable[dict]] | None = None) -> None:
        self.path = path
        self._rotate = rotate
        self._status = status
        self._apply = apply
        self.max_request = max_request
        self.read_timeout = read_timeout
        self.apply_timeout = apply_timeout
        self.max_clients = max_clients
        # the daemon's own user can already do anything to it; everyone else reads only
        self.admin_uids = admin_uids if admin_uids is not None else frozenset({0, os.geteuid()})
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        sock = _bind(self.path)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        # the limit is what readuntil() may buffer: one byte more than a request may be
        self._server = await asyncio.start_unix_server(self._client, sock=sock,
                                                       limit=self.max_request)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        self._unlink_own()

    def _unlink_own(self) -> None:
        """Remove the socket file only if it is still ours (a successor may have replaced it)."""
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    # --- one client ---------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._clients.add(task)
        try:
            if len(self._clients) > self.max_clients:
                await self._send(writer, _error("busy", f"more than {self.max_clients} clients "
                                                "connected; try again"))
                return
            uid = _peer_uid(writer)
            loop = asyncio.get_running_loop()
            # one deadline per request, from accept (then from the previous reply) to its
            # complete line: blank lines or a trickle of bytes never buy more time
            while await self._one_request(reader, writer, uid, loop.time() + self.read_timeout):
                pass
        except (ConnectionError, asyncio.CancelledError, TimeoutError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (OSError, TimeoutError, asyncio.CancelledError):
                pass

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           uid: int | None, deadline: float) -> bool:
        """Serve one request, read by `deadline` (loop time); False: close the connection."""
        keep = True
        try:
            async with asyncio.timeout_at(deadline):
                line = b""
                while not line.strip():         # blank lines are skipped, within the deadline
                    try:
                        line = await reader.readuntil(b"\n")
                    except asyncio.IncompleteReadError as exc:  # EOF: a last line without "\n"
                        if not exc.partial.strip():
                            return False
                        line, keep = exc.partial, False
        except asyncio.LimitOverrunError:
            await self._send(writer, _error("too_large", f"request longer than {self.max_request} "
                                            "bytes; closing the connection"))
            return False
        except TimeoutError:
            await self._send(writer, _error("timeout", "no complete request within "
                                            f"{self.read_timeout:g} s; closing the connection"))
            return False
        reply = await self.handle(line, uid)
        await self._send(writer, reply)
        return keep

    async def _send(self, writer: asyncio.StreamWriter, reply: dict) -> None:
        writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), self.read_timeout)   # a client that never reads

    # --- one request --------------------------------------------------------------------

    async def handle(self, line: bytes, uid: int | None) -> dict[str, Any]:
        """One request line -> one reply. Never raises for anything a client can send."""
        req_id = None
        try:
            obj = _decode(line)
            if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)) \
                    and not isinstance(obj.get("id"), bool):
                req_id = obj["id"]
            req = _validate(obj)
            cmd = req["command"]
            fields, mutating = COMMANDS[cmd]
            if mutating and uid not in self.admin_uids:
                raise Refused("not_permitted", f"'{cmd}' changes the daemon: only root may run it "
                              f"(your uid is {uid})")
            reply = await getattr(self, f"_cmd_{cmd}")(req)
        except Refused as exc:
            reply = _error(exc.code, str(exc))
        except Exception as exc:     # a bug here must not take the daemon or the client down
            _log().error("control.error", error=f"{type(exc).__name__}: {exc}")
            reply = _error("internal", f"internal error ({type(exc).__name__}); see the daemon log")
        else:
            if mutating:
                _log().info("control.command", command=cmd, uid=uid,
                         **{k: v for k, v in req.items() if k in fields}, active=reply.get("active"))
        if req_id is not None:
            reply["id"] = req_id
        return reply

    async def _cmd_status(self, req: dict) -> dict[str, Any]:
        return {"ok": True, "status": self._status()}

    async def _cmd_drain(self, req: dict) -> dict[str, Any]:
        key = self._resolve(req, "tunnel")
        await self._run(Drain(key))
        c = self._connection(key.connection)
        reply = _done(key, c)
        if c["active"] == key.tunnel:
            reply["warning"] = (f"{key.tunnel} is drained but no other tunnel of {key.connection} "
                                f"is usable: traffic stays on {key.tunnel} until one is")
        return reply

    async def _cmd_undrain(self, req: dict) -> dict[str, Any]:
        key = self._resolve(req, "tunnel")
        await self._run(Undrain(key))
        return _done(key, self._connection(key.connection))

    async def _cmd_failover(self, req: dict) -> dict[str, Any]:
        key = self._resolve(req, "to")
        await self._run(ForceFailover(key))
        c = self._connection(key.connection)
        if c["active"] != key.tunnel:
            t = c["tunnels"][key.tunnel]
            why = t.get("why_not_usable") or t.get("state")
            where = f"traffic stays on {c['active']}" if c["active"] else "no tunnel is active"
            raise Refused("not_usable", f"{key.tunnel} of {key.connection} is not usable ({why}): "
                          f"nothing changed, {where}")
        return _done(key, c)

    async def _cmd_psk_rotate(self, req: dict) -> dict[str, Any]:
        """Start (or abort) a connection's PSK rotation; the reply is its state, `status`
        follows it (`psk_rotation`). Refusals carry the reason, never a key."""
        if self._rotate is None:
            raise Refused("unsupported", "this daemon does not rotate keys")
        abort = req.get("abort", "no")
        if abort not in ("yes", "true", "1", "no", "false", "0"):
            # a typo must not start the rotation it meant to stop
            raise Refused("bad_request", f"abort must be yes or no, not {str(abort)[:20]!r}")
        name = self._resolve(req, "tunnel").connection if req.get("tunnel") is not None \
            else self._one_connection(req)
        try:
            state = await asyncio.wait_for(self._rotate(name, req.get("tunnel"),
                                                        abort in ("yes", "true", "1")),
                                           self.apply_timeout)
        except TimeoutError:
            raise Refused("timeout", "the daemon did not answer in time") from None
        except Refused:
            raise
        except Exception as exc:
            if type(exc).__name__ != "RotationRefused":
                raise
            raise Refused("refused", str(exc)) from None
        return {"ok": True, "connection": name, "rotation": state}

    def _one_connection(self, req: dict) -> str:
        conns = self._status()["connections"]
        name = req.get("connection")
        if name is None:
            if len(conns) != 1:
                raise Refused("bad_request", "more than one connection: name one with "
                              f"--connection ({', '.join(conns) or 'none configured'})")
            return next(iter(conns))
        if name not in conns:
            raise Refused("unknown_connection", f"no connection named {name[:60]!r}; known: "
                          f"{', '.join(conns) or 'none'}")
        return name

    async def _run(self, event: object) -> None:
        try:
            await asyncio.wait_for(self._apply(event), self.apply_timeout)
        except TimeoutError:
            raise Refused("timeout", f"the daemon did not process the command within "
                          f"{self.apply_timeout:g} s; it is queued and may still take effect")

    def _connection(self, name: str) -> dict[str, Any]:
        return self._status()["connections"][name]

    def _resolve(self, req: dict, field: str) -> TunnelKey:
        """Names from the request, checked against the running config; the connection may be
        left out when there is only one."""
        conns = self._status()["connections"]
        name = req.get("connection")
        if name is None:
            if len(conns) != 1:
                raise Refused("bad_request", "more than one connection: name one with "
                              f"--connection ({', '.join(conns) or 'none configured'})")
            name = next(iter(conns))
        if name not in conns:
            raise Refused("unknown_connection", f"no connection named {name[:60]!r}; known: "
                          f"{', '.join(conns) or 'none'}")
        tunnel = req.get(field)
        if tunnel is None:
            raise Refused("bad_request", f"'{req['command']}' needs '{field}' (a tunnel of {name}: "
                          f"{', '.join(conns[name]['tunnels'])})")
        if tunnel not in conns[name]["tunnels"]:
            raise Refused("unknown_tunnel", f"connection {name} has no tunnel named {tunnel[:60]!r}; "
                          f"known: {', '.join(conns[name]['tunnels'])}")
        return TunnelKey(name, tunnel)


def _log() -> Any:
    """The server's logger; imported late so the CLI client needs no structlog."""
    from vpnd import logs

    return logs.get("vpnd.control")


def _done(key: TunnelKey, c: dict) -> dict[str, Any]:
    return {"ok": True, "connection": key.connection, "tunnel": key.tunnel,
            "active": c["active"], "reason": c["reason"], "pinned": c["pinned"]}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": message}


def _decode(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise Refused("bad_request", "request is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:     # deep nesting is a RecursionError
        raise Refused("bad_request", f"request is not valid JSON: {str(exc)[:120]}") from None


def _validate(req: Any) -> dict[str, Any]:
    if not isinstance(req, dict):
        raise Refused("bad_request", "request must be a JSON object with a \"command\"")
    cmd = req.get("command")
    if not isinstance(cmd, str):
        raise Refused("bad_request", "\"command\" must be a string: one of " + ", ".join(COMMANDS))
    if cmd not in COMMANDS:
        raise Refused("unknown_command", f"unknown command {cmd[:60]!r}; known: "
                      + ", ".join(COMMANDS))
    fields, _ = COMMANDS[cmd]
    for k, v in req.items():
        if k in ("command", "id"):
            continue
        if k not in fields:
            allowed = ", ".join(fields) or "none"
            raise Refused("bad_request", f"'{cmd}' takes no field {k[:60]!r} (fields: {allowed})")
        if not isinstance(v, str) and v is not None:
            raise Refused("bad_request", f"'{k}' must be a string, not {type(v).__name__}")
    return req


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                               struct.calcsize("3i")))
        return uid
    except OSError:
        return None


def _bind(path: str) -> socket.socket:
    """A listening socket at `path`, mode 0600 from its first instant.

    A stale socket (nobody answers) is replaced atomically; a live one means another vpnd is
    serving there, and anything that is not a socket is never deleted."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
            raise ControlError(f"{path}: another vpnd is answering there")
        except (ConnectionRefusedError, FileNotFoundError):
            pass                                # stale: its daemon is gone
        except OSError as exc:
            raise ControlError(f"{path}: cannot tell whether it is in use ({exc})") from exc
        finally:
            probe.close()
    try:
        p.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlError(f"cannot create {p.parent}: {exc.strerror}") from exc
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)   # no window in which others may connect
        try:
            sock.bind(str(tmp))
        finally:
            os.umask(old)
        os.chmod(tmp, 0o600)
        sock.listen(64)
        os.replace(tmp, p)      # atomic: the stale socket is never missing, never ours twice
    except OSError as exc:
        sock.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ControlError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


# --- the client ----------------------------------------------------------------------------

MAX_REPLY = 16 * 1024 * 1024


class Unreachable(Exception):
    """The daemon could not be asked. `kind`: not_running, permission or no_answer."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def request(path: str, payload: dict[str, Any], timeout: float = APPLY_TIMEOUT + 5.0) -> dict:
    """One request, one reply (blocking: the CLI has nothing else to do)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise Unreachable("not_running", f"vpnd is not running: no control socket at {path}") \
                from None
        except ConnectionRefusedError:
            raise Unreachable("not_running", f"vpnd is not running: nothing answers on {path} "
                              "(a stale socket from a stopped daemon)") from None
        except PermissionError:
            raise Unreachable("permission", f"permission denied: {path} is root's; run vpnd as "
                              "root (e.g. sudo vpnd ...)") from None
        except OSError as exc:
            raise Unreachable("not_running", f"cannot reach vpnd at {path}: "
                              f"{exc.strerror or exc}") from None
        data = b""
        try:
            try:
                s.sendall(json.dumps(payload).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass        # refused before reading ("busy"): its reply may be waiting
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_REPLY:
                    raise Unreachable("no_answer", f"{path}: reply too long")
        except socket.timeout:
            raise Unreachable("no_answer", f"vpnd did not answer within {timeout:g} s on {path}") \
                from None
        except OSError as exc:
            if not data.endswith(b"\n"):
                raise Unreachable("no_answer", f"lost the connection to vpnd on {path}: "
                                  f"{exc.strerror or exc}") from None
    finally:
        s.close()
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise Unreachable("no_answer", f"{path}: no valid reply from vpnd"
                          + (" (connection closed)" if not data else ""))
    return reply
