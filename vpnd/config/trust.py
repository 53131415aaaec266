"""Which files vpnd trusts, the way sshd's StrictModes trusts a key: refused, not warned about.

The configuration decides what root runs (`vtysh_path`) and where traffic goes, and holds or
names the keys. So `vpnd check`, `vpnd run` and every SIGHUP reload (one call, in
`load_file_with_warnings(strict_permissions=True)`) refuse:
- a config file, psk_file or vtysh_path owned by anyone but root or the user vpnd runs as;
- any of them, or the directory holding the config or a psk_file, writable by group or
  others (a directory with the sticky bit, like /tmp, excepted: nobody else can replace a
  file in it);
- a key readable by group or others: a psk_file, or the config file when it has an inline psk.
Each problem names the file and the rule and says how to fix it. (Modes are read when the
file is loaded; vpnd keeps no file open.)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from vpnd.config.model import Config, Problem


def problems(config: Config, config_stat: os.stat_result, uid: int | None = None) -> list[Problem]:
    uid = os.geteuid() if uid is None else uid
    found: list[Problem] = []
    source = config.source
    inline = [(ci, ti) for ci, c in enumerate(config.connections)
              for ti, t in enumerate(c.tunnels) if t.psk_file is None]
    found += _file(source, source, config_stat, uid, secret=False)
    if inline and config_stat.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        ci, ti = inline[0]
        found.append(Problem(f"connection[{ci}].tunnel[{ti}].psk",
                             f"inline key in {source}, which is readable by group or others "
                             f"(mode {_mode(config_stat)}): move it to psk_file or chmod 600 "
                             f"{source}"))
    found += _directory(source, os.path.dirname(os.path.abspath(source)), uid)
    for ci, c in enumerate(config.connections):
        for ti, t in enumerate(c.tunnels):
            if t.psk_file is None:
                continue
            where = f"connection[{ci}].tunnel[{ti}].psk_file"
            try:
                st = os.stat(t.psk_file)
            except OSError:
                continue                # the loader read it a moment ago; it says if not
            found += _file(where, t.psk_file, st, uid, secret=True)
            found += _directory(where, os.path.dirname(t.psk_file), uid)
    if any(c.routing == "bgp" for c in config.connections):
        vtysh = config.daemon.vtysh_path
        try:
            st = os.stat(vtysh)
        except OSError:
            st = None                   # not installed: `vpnd check` and `vpnd doctor` say so
        if st is not None:
            found += _file("daemon.vtysh_path", vtysh, st, uid, secret=False, runs=True)
    return _unique(found)


def _file(where: str, path: str, st: os.stat_result, uid: int, *, secret: bool,
          runs: bool = False) -> list[Problem]:
    what = "root runs it" if runs else "it decides where traffic goes" if not secret else \
        "it holds a key"
    out = []
    if st.st_uid not in (0, uid):
        out.append(Problem(where, f"{path} is owned by uid {st.st_uid}, not root or the user "
                                  f"vpnd runs as (uid {uid}), and {what}: chown root {path}"))
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        out.append(Problem(where, f"{path} is writable by group or others (mode {_mode(st)}), "
                                  f"and {what}: chmod go-w {path}"))
    if secret and st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        out.append(Problem(where, f"{path} is readable by group or others (mode {_mode(st)}): "
                                  f"chmod 600 {path}"))
    return out


def _directory(where: str, path: str, uid: int) -> list[Problem]:
    try:
        st = os.stat(path)
    except OSError:
        return []
    out = []
    if st.st_uid not in (0, uid):
        out.append(Problem(where, f"its directory {path} is owned by uid {st.st_uid}, not root "
                                  f"or the user vpnd runs as (uid {uid}): chown root {path}"))
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        out.append(Problem(where, f"its directory {path} is writable by group or others (mode "
                                  f"{_mode(st)}): others can replace the file; chmod go-w {path}"))
    return out


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _unique(found: Iterable[Problem]) -> list[Problem]:
    return list(dict.fromkeys(found))
