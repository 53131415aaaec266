"""vpnd installed from its Debian package under a real systemd PID 1: runs INSIDE a `vng
--systemd` guest (tests/vm/test_vm_deb.py boots it; docs/lab-vm.md).

The guest's root is the host's, with throwaway overlays on /etc, /usr and /var, so apt and dpkg
really install into it. VPND_DEBS names two packages built by scripts/build-deb from this
checkout: revision 1 and a rebuilt revision 2. The script, step by step (each timed):

- makes the guest look like a gateway without FRR's group: the docker-ism
  /usr/sbin/policy-rc.d (it forbids every service start from a maintainer script) is moved
  away, and `frrvty` is deleted; `systemd-run -p SupplementaryGroups=frrvty` then fails with
  216/GROUP, as the shipped unit did on a machine without FRR;
- `apt-get install ./vpnd_<v>-1_all.deb` (every dependency is already installed: no network);
- writes /etc/vpnd/config.toml (+ PSK files) from the native-backend lab's config and one
  drop-in with the lab's only difference, NetworkNamespacePath= of the gateway namespace;
- `vpnd check`, `vpnd doctor` (in the gateway namespace, after the firewall recipe of
  docs/install.md), `systemctl start vpnd`, both tunnels up in route mode, `systemctl reload`;
- `apt-get install ./vpnd_<v>-2_all.deb`: postinst try-restarts vpnd, which adopts the SAs
  and routes (same IKE/CHILD unique ids, no route deleted);
- `systemd-analyze security vpnd`;
- BGP mode with the shipped unit unchanged: FRR's daemons run as Debian's do (user frr, vty
  sockets frr:frrvty 0770, the frr user added to the group as FRR's postinst does); vpnd
  (root without CAP_DAC_OVERRIDE) configures bgpd through vtysh; both sessions Established;
- `apt-get remove vpnd`: vpnd stopped, SAs left as withdraw_on_stop = false says;
- prints `DEB-RESULT {json}` as its last line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from vpnd_lab.guests.systemd import journal, sh, show, vpnd_events, wait

ETC = Path("/etc/vpnd")
VPND = "/usr/bin/vpnd"          # the package's, not the venv's first on PATH
DROPIN = Path("/etc/systemd/system/vpnd.service.d/lab.conf")
RESULT: dict[str, Any] = {"errors": [], "seconds": {}}
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
# docs/install.md's firewall recipe (tests/lab/test_install_firewall.py checks they agree)
FIREWALL = [
    "nft add table inet filter",
    "nft add chain inet filter input '{ type filter hook input priority filter; }'",
    "nft insert rule inet filter input udp dport '{ 500, 4500 }' accept",
    "nft insert rule inet filter input meta l4proto esp accept",
]


class Step:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.t0 = time.monotonic()
        print(f"== {self.name}", flush=True)

    def __exit__(self, typ, exc, tb) -> bool:
        RESULT["seconds"][self.name] = round(time.monotonic() - self.t0, 2)
        print(f"== {self.name}: {RESULT['seconds'][self.name]} s", flush=True)
        if exc is not None:
            RESULT["errors"].append(f"{self.name}: {typ.__name__}: {exc}")
            traceback.print_exception(typ, exc, tb)
        return True


def apt(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", *args], capture_output=True,
                          text=True, timeout=timeout, env=APT_ENV)


def installed_version() -> str:
    return sh("dpkg-query", "-W", "-f", "${Version}", "vpnd").stdout.strip()


def events(name: str) -> list[dict[str, Any]]:
    return [e for e in vpnd_events(journal()) if e.get("event") == name]


def sa_ids(lab) -> dict[str, tuple[str, int, str, int]]:
    from vpnd_lab.cli import list_sas
    return {s["name"]: (s["ike"], s["ike_id"], s["child"], s["child_id"]) for s in list_sas(lab)}


PROBE = Path("/run/systemd/system/vpnd-groupprobe.service")


def group_probe() -> tuple[int, str]:
    """A oneshot unit with the shipped unit's SupplementaryGroups=: fails with 216/GROUP where
    the group does not exist. (systemd-run needs D-Bus, which this boot does not start; a unit
    file systemd has not seen yet is loaded on demand, without a daemon-reload.)"""
    if not PROBE.exists():
        PROBE.write_text("[Service]\nType=oneshot\nSupplementaryGroups=frrvty\nExecStart=/bin/true\n")
    r = sh("systemctl", "start", PROBE.name, timeout=120)
    st = sh("systemctl", "show", PROBE.name, "-p", "Result,ExecMainCode,ExecMainStatus").stdout.split()
    sh("systemctl", "reset-failed", PROBE.name)
    return r.returncode, " ".join(st) + " " + r.stderr.strip()[-300:]


def identity(pid: str) -> dict[str, str]:
    """A process's effective capabilities and groups, as the kernel sees them."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    keep = {k: v.strip() for k, v in (l.split(":", 1) for l in status) if k in ("Name", "Uid", "Groups", "CapEff", "CapBnd")}
    eff = int(keep.get("CapEff", "0"), 16)
    keep["cap_dac_override"] = str(bool(eff & (1 << 1)))
    return keep


def write_config(lab) -> None:
    """The lab's config as /etc/vpnd/config.toml, its PSKs as /etc/vpnd/tunnelN.psk (0600):
    where the shipped unit looks. The control socket goes back to its default in /run/vpnd."""
    lines = []
    for line in (lab.dir / "vpnd.toml").read_text().splitlines():
        if line.startswith("control_socket"):
            continue
        m = re.match(r'psk_file = "(.*)"$', line)
        if m:
            src = Path(m[1])
            shutil.copyfile(src, ETC / src.name)
            (ETC / src.name).chmod(0o600)
            line = f'psk_file = "{src.name}"'
        lines.append(line)
    (ETC / "config.toml").write_text("\n".join(lines) + "\n")
    (ETC / "config.toml").chmod(0o600)


def start_and_wait(label: str) -> None:
    t0 = time.monotonic()
    r = sh("systemctl", "start", "vpnd.service", timeout=300)
    RESULT[f"{label}_start_seconds"] = round(time.monotonic() - t0, 2)
    RESULT[f"{label}_start_rc"] = r.returncode
    if r.returncode != 0:
        RESULT[f"{label}_status"] = sh("systemctl", "status", "--no-pager", "-l", "vpnd.service").stdout[-3000:]
        raise RuntimeError(f"systemctl start vpnd exited {r.returncode}: {r.stderr.strip()[-500:]}")
    RESULT[f"{label}_after_start"] = show("ActiveState", "SubState", "StatusText", "MainPID",
                                          "ExecMainStartTimestampMonotonic")


def route_monitor(lab) -> subprocess.Popen:
    return subprocess.Popen(["ip", "-n", lab.ns("cgw"), "monitor", "route"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def stop_monitor(mon: subprocess.Popen) -> list[str]:
    mon.terminate()
    out, _ = mon.communicate(timeout=10)
    return out.splitlines()


def main() -> int:
    from vpnd_lab import frr, scenario
    from vpnd_lab.cli import both_established, vpnd_routes
    from vpnd_lab.topology import Lab

    debs = [Path(p) for p in os.environ["VPND_DEBS"].split(":")]
    RESULT["debs"] = [p.name for p in debs]
    RESULT["uptime_at_script"] = float(Path("/proc/uptime").read_text().split()[0])
    RESULT["pid1"] = Path("/proc/1/comm").read_text().strip()
    lab = Lab(prefix="vdeb")
    opts = scenario.Options(backend="native", interval=0.25, timeout=1.0, retries=3)

    with Step("prepare"):
        if Path("/usr/sbin/policy-rc.d").exists():
            os.rename("/usr/sbin/policy-rc.d", "/usr/sbin/policy-rc.d.docker")
            RESULT["policy_rc_d_moved"] = True
        sh("groupdel", "frrvty", check=True)
        RESULT["no_group_rc"], RESULT["no_group_output"] = group_probe()
        # The lab's charons run in namespaces; the root namespace's charon and FRR are of no use
        # here and slow to start under TCG (the unit Wants= them).
        sh("systemctl", "mask", "--runtime", "--no-reload", "frr.service", "strongswan.service",
           "strongswan-starter.service", check=True)
    with Step("lab_route"):
        scenario.up(lab, opts)
        DROPIN.parent.mkdir(parents=True, exist_ok=True)
        DROPIN.write_text("# Lab only: vpnd supervises the lab's gateway namespace.\n[Service]\n"
                          f"NetworkNamespacePath=/run/netns/{lab.ns('cgw')}\n")
    if RESULT["errors"]:
        return finish(lab)

    with Step("install"):
        t0 = time.monotonic()
        r = apt("install", str(debs[0]), timeout=900)
        RESULT["install_apt_seconds"] = round(time.monotonic() - t0, 2)
        RESULT["install_rc"] = r.returncode
        RESULT["install_output"] = (r.stdout + r.stderr)[-2500:]
        if r.returncode != 0:
            raise RuntimeError(f"apt-get install exited {r.returncode}")
        RESULT["installed_version"] = installed_version()
        RESULT["group_after_install"] = sh("getent", "group", "frrvty").stdout.strip()
        st = os.stat(ETC)
        RESULT["etc_vpnd_mode"] = oct(st.st_mode & 0o7777)
        RESULT["unit_enabled_after_install"] = sh("systemctl", "is-enabled", "vpnd.service").stdout.strip()
        RESULT["unit_active_after_install"] = sh("systemctl", "is-active", "vpnd.service").stdout.strip()
        RESULT["launcher"] = Path("/usr/bin/vpnd").read_text().splitlines()[0]
        RESULT["with_group_rc"], RESULT["with_group_output"] = group_probe()
    if RESULT.get("install_rc") != 0:
        return finish(lab)

    with Step("check"):
        write_config(lab)
        r = sh(VPND, "check", "-c", str(ETC / "config.toml"), timeout=300)
        RESULT["check_rc"] = r.returncode
        RESULT["check_output"] = (r.stdout + r.stderr)[-1500:]
    with Step("doctor"):
        for cmd in FIREWALL:
            sh("ip", "netns", "exec", lab.ns("cgw"), "sh", "-c", cmd, check=True)
        r = sh("ip", "netns", "exec", lab.ns("cgw"), VPND, "doctor", "--json", "-c", str(ETC / "config.toml"),
               timeout=300)
        RESULT["doctor_rc"] = r.returncode
        try:
            RESULT["doctor"] = json.loads(r.stdout)
        except ValueError:
            RESULT["doctor_output"] = (r.stdout + r.stderr)[-3000:]

    with Step("start_route"):
        start_and_wait("route")
        RESULT["route_ready_logged"] = bool(events("vpnd.ready"))
        wait("both tunnels up", lambda: both_established(lab), 120)
        RESULT["route_routes"] = wait("vpnd's routes", lambda: vpnd_routes(lab), 60)
        RESULT["route_sas"] = sa_ids(lab)
    if RESULT.get("route_start_rc") != 0:
        return finish(lab)

    with Step("reload"):
        n = len(events("config.reloaded"))
        pid = show("MainPID")["MainPID"]
        r = sh("systemctl", "reload", "vpnd.service", timeout=300)
        RESULT["reload_rc"] = r.returncode
        wait("config.reloaded", lambda: len(events("config.reloaded")) > n, 120)
        RESULT["reload_same_pid"] = show("MainPID")["MainPID"] == pid

    with Step("upgrade"):
        before = {"sas": sa_ids(lab), "routes": vpnd_routes(lab), "pid": show("MainPID")["MainPID"],
                  "config": (ETC / "config.toml").read_bytes().hex()[:64]}
        n_ready = len(events("vpnd.ready"))
        mon = route_monitor(lab)
        time.sleep(0.5)
        t0 = time.monotonic()
        r = apt("install", str(debs[1]), timeout=900)
        RESULT["upgrade_apt_seconds"] = round(time.monotonic() - t0, 2)
        RESULT["upgrade_rc"] = r.returncode
        RESULT["upgrade_output"] = (r.stdout + r.stderr)[-2000:]
        RESULT["upgraded_version"] = installed_version()
        wait("the restarted vpnd ready", lambda: len(events("vpnd.ready")) > n_ready, 180)
        wait("vpnd active", lambda: show("ActiveState")["ActiveState"] == "active", 60)
        RESULT["upgrade_to_ready_seconds"] = round(time.monotonic() - t0, 2)
        time.sleep(3)        # a few probe rounds of the new vpnd
        after = {"sas": sa_ids(lab), "routes": vpnd_routes(lab), "pid": show("MainPID")["MainPID"],
                 "config": (ETC / "config.toml").read_bytes().hex()[:64]}
        RESULT["upgrade_route_events"] = [l for l in stop_monitor(mon) if lab.plan.vpc_net in l]
        RESULT["upgrade_before"], RESULT["upgrade_after"] = before, after
        RESULT["upgrade_adopted"] = [e.get("event") for e in vpnd_events(journal())
                                     if "adopt" in str(e.get("event", ""))][-6:]
        RESULT["upgrade_state"] = show("ActiveState", "SubState", "NRestarts", "Result")
        RESULT["etc_vpnd_after_upgrade"] = sorted(p.name for p in ETC.iterdir())

    with Step("security"):
        r = sh("systemd-analyze", "security", "--no-pager", "vpnd.service", timeout=300)
        RESULT["security_output"] = r.stdout
        m = re.search(r"Overall exposure level for vpnd.service: ([\d.]+)", r.stdout)
        RESULT["exposure"] = float(m[1]) if m else None
        r = sh("systemd-analyze", "security", "--offline=true", "--no-pager",
               "/usr/lib/systemd/system/vpnd.service", timeout=300)
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
        RESULT["exposure_offline_installed"] = float(m[1]) if m else None

    with Step("stop_route"):
        r = sh("systemctl", "stop", "vpnd.service", timeout=120)
        RESULT["stop_rc"] = r.returncode

    # BGP mode: the same lab prefix, so the drop-in's namespace path stays right (no reload).
    with Step("lab_bgp"):
        sh("usermod", "-a", "-G", "frrvty", "frr", check=True)   # FRR's postinst, installed after vpnd
        bgp_opts = scenario.Options(backend="native", routing="bgp", frr_by_vpnd=True, interval=0.25,
                                    timeout=1.0, retries=3)
        scenario.up(lab, bgp_opts)
        write_config(lab)
        vty = lab.dir / "frr-cgw"
        RESULT["vty_sockets"] = sh("ls", "-l", str(vty)).stdout
    with Step("start_bgp"):
        start_and_wait("bgp")
        wait("frr.applied", lambda: events("frr.applied"), 120)
        wait("both tunnels up", lambda: both_established(lab), 120)
        wait("both BGP sessions Established",
             lambda: len(frr.established_peers(lab, "cgw")) == 2, 180, step=0.5)
        wait("the VPC prefix installed by zebra",
             lambda: lab.plan.vpc_net in lab.ip("cgw", "route", "show", "proto", "bgp").stdout, 60)
        RESULT["bgp_established"] = sorted(frr.established_peers(lab, "cgw"))
        RESULT["bgp_route"] = lab.ip("cgw", "route", "show", lab.plan.vpc_net).stdout.strip()
        RESULT["bgp_running_config"] = frr.vtysh(lab, "cgw", "-c", "show running-config bgpd")[-1500:]
        RESULT["bgp_frr_errors"] = [{k: e.get(k) for k in ("event", "error", "command", "output")}
                                    for e in vpnd_events(journal())
                                    if e.get("event", "").startswith("frr") and e.get("level") in ("error", "warning")][-10:]
        RESULT["bgp_status"] = show("StatusText")["StatusText"]
        r = sh("ip", "netns", "exec", lab.ns("cgw"), VPND, "doctor", "--json", "-c", str(ETC / "config.toml"),
               timeout=300)
        RESULT["bgp_doctor"] = {c["check"]: [c["status"], c["detail"]] for c in json.loads(r.stdout)["checks"]
                                if c["check"] in ("frr", "unit_group", "frr_graceful_restart")}
    with Step("bgp_identity"):
        RESULT["bgp_vpnd_identity"] = identity(show("MainPID")["MainPID"])
        vtysh = sh("pgrep", "-P", show("MainPID")["MainPID"], "-x", "vtysh").stdout.split()
        RESULT["bgp_vtysh_identity"] = identity(vtysh[0]) if vtysh else None
        RESULT["frrvty_gid"] = sh("getent", "group", "frrvty").stdout.split(":")[2]
    with Step("reload_bgp"):
        n = len(events("config.reloaded"))
        r = sh("systemctl", "reload", "vpnd.service", timeout=300)
        RESULT["bgp_reload_rc"] = r.returncode
        wait("config.reloaded", lambda: len(events("config.reloaded")) > n, 120)

    # What the group is for: the same unit without it (a drop-in that empties the list).
    nogroup = DROPIN.with_name("nogroup.conf")
    with Step("bgp_without_group"):
        nogroup.write_text("[Service]\nSupplementaryGroups=\n")
        sh("systemctl", "daemon-reload", check=True, timeout=300)
        n = len(events("frr.unreachable"))
        sh("systemctl", "restart", "--no-block", "vpnd.service", check=True)
        wait("frr.unreachable", lambda: len(events("frr.unreachable")) > n, 180)
        RESULT["nogroup_unreachable"] = {k: events("frr.unreachable")[-1].get(k) for k in ("event", "error", "level")}
        RESULT["nogroup_vpnd_identity"] = identity(show("MainPID")["MainPID"])
    with Step("bgp_group_back"):
        nogroup.unlink(missing_ok=True)
        sh("systemctl", "daemon-reload", check=True, timeout=300)
        n = len(events("bgp.adopted"))     # vpnd read FRR's state through vtysh again
        sh("systemctl", "restart", "vpnd.service", check=True, timeout=300)
        wait("bgp.adopted", lambda: len(events("bgp.adopted")) > n, 180)
        wait("both BGP sessions Established", lambda: len(frr.established_peers(lab, "cgw")) == 2, 180, step=0.5)
        RESULT["group_back_established"] = sorted(frr.established_peers(lab, "cgw"))

    with Step("remove"):
        before = sa_ids(lab)
        r = apt("remove", "vpnd")
        RESULT["remove_rc"] = r.returncode
        RESULT["remove_state"] = sh("systemctl", "is-active", "vpnd.service").stdout.strip()
        RESULT["remove_sas_before"], RESULT["remove_sas_after"] = before, sa_ids(lab)
        RESULT["remove_left_in_etc"] = sorted(p.name for p in ETC.iterdir()) if ETC.exists() else []
        RESULT["remove_stopping_logged"] = bool(events("vpnd.stopping"))
    return finish(lab)


def finish(lab) -> int:
    try:
        RESULT["journal_tail"] = [e["MESSAGE"][:300] for e in journal()
                                  if isinstance(e.get("MESSAGE"), str)][-30:]
    except Exception as exc:      # noqa: BLE001 - the report must still be printed
        RESULT["journal_tail"] = [f"journalctl failed: {exc}"]
    try:
        sh("systemctl", "stop", "vpnd.service", timeout=60)
        lab.destroy()
    except Exception as exc:      # noqa: BLE001
        RESULT["teardown"] = str(exc)
    print("DEB-RESULT " + json.dumps(RESULT, sort_keys=True), flush=True)
    return 1 if RESULT["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
