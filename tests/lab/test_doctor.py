"""`vpnd doctor` against the real kernel, nftables and charon, in scratch namespaces: every
check must see a broken setting and its repair, and answer in one line with a fix."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from vpnd_testing.config_toml import SECRET_1, SECRET_2, bgp_config, dumps, mutate, route_config
from vpnd_testing.netns_helpers import scratch_netns, sh
from vpnd import doctor
from vpnd.doctor import FAIL, PASS, SKIP, WARN, Packet, Result

VPND = str(Path(sys.executable).with_name("vpnd"))


def write_config(tmp_path: Path, doc: dict, vici: str | None = None) -> Path:
    doc = mutate(doc, "daemon.vici_socket", vici or str(tmp_path / "no-charon.vici"))
    path = tmp_path / "config.toml"
    path.write_text(dumps(doc))
    path.chmod(0o600)
    return path


def doctor_in(ns: str, config: Path) -> tuple[int, dict[str, dict], str]:
    r = subprocess.run(["ip", "netns", "exec", ns, VPND, "doctor", "-c", str(config), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] == (r.returncode == 0)
    return r.returncode, {c["check"]: c for c in report["checks"]}, r.stdout + r.stderr


# nft wants a newline after a chain's closing brace
DROP = "table inet f {\n chain input {\n type filter hook input priority 0; policy drop; %s\n }\n}\n"


def nft(ns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                   check=True, capture_output=True, timeout=10)


def uplink(ns: str) -> None:
    """A veth uplink with the config's local address and a default route."""
    sh("ip", "-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    sh("ip", "-n", ns, "addr", "add", "198.18.0.2/24", "dev", "up0")
    sh("ip", "-n", ns, "link", "set", "up0", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", "198.18.0.1")


def test_broken_gateway_fails_with_fixes(tmp_path):
    with scratch_netns() as ns:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=0",
           "net.ipv4.conf.all.rp_filter=1")
        nft(ns, DROP % "")
        rc, checks, out = doctor_in(ns, write_config(tmp_path, route_config()))
    assert rc == 1
    assert checks["config"]["status"] == PASS
    assert checks["ip_forward"]["status"] == FAIL and "ip_forward = 1" in checks["ip_forward"]["fix"]
    assert checks["firewall"]["status"] == FAIL
    assert all(p in checks["firewall"]["detail"] for p in ("udp/500", "udp/4500", "esp"))
    assert checks["rp_filter"]["status"] == WARN
    assert checks["vici_socket"]["status"] == FAIL and "no-charon.vici" in checks["vici_socket"]["detail"]
    for t in ("tunnel1", "tunnel2"):
        assert checks[f"route:vpc1/{t}"]["status"] == FAIL     # 198.18.0.2 is not on this box
    assert checks["frr"]["status"] == SKIP
    for c in checks.values():
        assert c["status"] in (PASS, WARN, FAIL, SKIP)
        assert c["status"] not in (WARN, FAIL) or c["fix"], c
        assert "\n" not in c["detail"] + c["fix"]
    assert SECRET_1 not in out and SECRET_2 not in out


def test_repaired_gateway_passes(tmp_path):
    with scratch_netns() as ns:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv4.conf.all.rp_filter=2", "net.ipv4.conf.default.rp_filter=2")
        nft(ns, DROP % "udp dport { 500, 4500 } accept; meta l4proto esp accept")
        uplink(ns)
        _, checks, _ = doctor_in(ns, write_config(tmp_path, route_config()))
    for name in ("config", "ip_forward", "firewall", "rp_filter", "route:vpc1/tunnel1",
                 "route:vpc1/tunnel2"):
        assert checks[name]["status"] == PASS, checks[name]
    assert "via 198.18.0.1 dev up0" in checks["route:vpc1/tunnel1"]["detail"]


def test_xfrm_check_agrees_with_the_kernel(tmp_path):
    with scratch_netns() as ns:
        works = subprocess.run(["ip", "-n", ns, "link", "add", "x0", "type", "xfrm", "if_id", "7"],
                               capture_output=True).returncode == 0
        _, checks, _ = doctor_in(ns, write_config(tmp_path, route_config()))
        links = sh("ip", "-n", ns, "-o", "link").stdout
    assert checks["xfrm_interface"]["status"] == (PASS if works else FAIL)
    assert "vpnddr" not in links, "the test link must be deleted"


def test_cloud_address_routed_into_a_tunnel_fails(tmp_path):
    with scratch_netns() as ns:
        uplink(ns)
        sh("ip", "-n", ns, "link", "add", "ipsec0", "type", "veth", "peer", "name", "ipsec0p")
        sh("ip", "-n", ns, "link", "set", "ipsec0", "up")
        sh("ip", "-n", ns, "route", "add", "198.19.0.0/24", "dev", "ipsec0")
        _, checks, _ = doctor_in(ns, write_config(tmp_path, route_config()))
    assert checks["route:vpc1/tunnel1"]["status"] == FAIL
    assert "into tunnel interface ipsec0" in checks["route:vpc1/tunnel1"]["detail"]


def test_invalid_config_fails_the_config_check_and_runs_the_rest(tmp_path):
    path = write_config(tmp_path, mutate(route_config(), "connection.0.ike.dh_group", "group99"))
    with scratch_netns() as ns:
        rc, checks, out = doctor_in(ns, path)
    assert rc == 1
    assert checks["config"]["status"] == FAIL and "dh_group" in checks["config"]["detail"]
    assert "ip_forward" in checks and "firewall" in checks
    assert SECRET_1 not in out


def test_bgp_mode_checks_frr(tmp_path):
    doc = mutate(bgp_config(), "daemon.vtysh_path", str(tmp_path / "no-vtysh"))
    with scratch_netns() as ns:
        _, checks, _ = doctor_in(ns, write_config(tmp_path, doc))
    assert checks["frr"]["status"] == FAIL and "no-vtysh" in checks["frr"]["detail"]


@pytest.mark.lab
def test_against_a_real_charon(tmp_path):
    """charon running in the namespace: VICI, its version and the IKE ports all pass."""
    from test_charon_real import Charon

    with scratch_netns() as ns:
        charon = Charon(ns, tmp_path / "charon")
        charon.start()
        try:
            for _ in range(100):
                if Path(charon.vici).exists():
                    break
                time.sleep(0.05)
            _, checks, _ = doctor_in(ns, write_config(tmp_path, route_config(), vici=charon.vici))
        finally:
            charon.kill()
    assert checks["vici_socket"]["status"] == PASS, checks["vici_socket"]
    assert checks["strongswan_version"]["status"] == PASS
    assert "charon over VICI" in checks["strongswan_version"]["detail"]
    assert checks["ike_ports"]["status"] == PASS


# --- the firewall evaluator, on rulesets the real nft produced ---------------------------

def verdicts(script: str) -> dict[str, tuple[str, bool]]:
    with scratch_netns() as ns:
        if script:
            nft(ns, script)
        out = sh("ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset").stdout
    found = doctor.firewall_verdicts(doctor.parse_ruleset(out))
    return {str(p): (v, u) for p, (v, _, u) in found.items()}




@pytest.mark.parametrize("script,expected", [
    ("", {"udp/500": "accept", "udp/4500": "accept", "esp": "accept"}),
    (DROP % "", {"udp/500": "drop", "udp/4500": "drop", "esp": "drop"}),
    (DROP % "udp dport 500 accept", {"udp/500": "accept", "udp/4500": "drop", "esp": "drop"}),
    (DROP % "meta l4proto { udp, esp } accept", {"udp/500": "accept", "udp/4500": "accept", "esp": "accept"}),
    (DROP % "udp dport 400-600 accept; ip protocol esp accept", {"udp/500": "accept", "udp/4500": "drop", "esp": "accept"}),
    (DROP % "tcp dport 500 accept", {"udp/500": "drop", "udp/4500": "drop", "esp": "drop"}),
    (DROP % "jump ike\n }\n chain ike {\n udp dport { 500, 4500 } accept; meta l4proto esp accept",
     {"udp/500": "accept", "udp/4500": "accept", "esp": "accept"}),
    ("table ip filter {\n chain INPUT {\n type filter hook input priority 0; policy accept; ip protocol esp drop\n }\n}\n",
     {"udp/500": "accept", "udp/4500": "accept", "esp": "drop"}),
])
def test_firewall_verdicts(script, expected):
    assert {p: v for p, (v, _) in verdicts(script).items()} == expected


def test_rules_on_addresses_make_the_answer_uncertain():
    found = verdicts(DROP % "ip saddr 198.19.0.0/24 udp dport { 500, 4500 } accept")
    assert found["udp/500"] == ("drop", True)


# --- output and exit code ---------------------------------------------------------------

def run_main(results: list[Result], as_json: bool) -> tuple[int, str]:
    out = io.StringIO()
    rc = doctor.main(SimpleNamespace(config="x", json=as_json), out=out, checks=lambda _: results)
    return rc, out.getvalue()


def test_exit_code_and_text():
    ok = [Result("ip_forward", PASS, "net.ipv4.ip_forward = 1"),
          Result("rp_filter", WARN, "strict", "sysctl -w ...")]
    assert run_main(ok, False)[0] == 0
    rc, text = run_main(ok + [Result("firewall", FAIL, "drops esp", "nft insert rule ...")], False)
    assert rc == 1
    assert "FAIL  firewall    drops esp" in text and "fix: nft insert rule ..." in text
    assert text.rstrip().endswith("1 pass, 1 warn, 1 fail, 0 skip")
    rc, js = run_main(ok, True)
    assert json.loads(js) == {"ok": True, "checks": [
        {"check": "ip_forward", "status": "PASS", "detail": "net.ipv4.ip_forward = 1", "fix": ""},
        {"check": "rp_filter", "status": "WARN", "detail": "strict", "fix": "sysctl -w ..."}]}


def test_packet_names():
    assert [str(p) for p in doctor.PACKETS] == ["udp/500", "udp/4500", "esp"]
    assert str(Packet("esp")) == "esp"


def test_uncertain_drop_warns_rather_than_fails():
    with scratch_netns() as ns:
        nft(ns, DROP % "ct state established accept; iifname up0 udp dport { 500, 4500 } accept; "
                       "iifname up0 meta l4proto esp accept")
        result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                                 "from vpnd.doctor import check_firewall; r = check_firewall(); "
                                 "print(r.status, r.detail)"],
                                capture_output=True, text=True, timeout=30)
    assert result.stdout.startswith("WARN the input rules may drop"), result.stdout + result.stderr


def mtu_check(ns: str, config: Path) -> dict:
    return doctor_in(ns, config)[1]["mtu"]


def test_mtu_needs_room_for_esp_or_an_mss_clamp(tmp_path):
    config = write_config(tmp_path, route_config())
    with scratch_netns() as ns:
        assert mtu_check(ns, config)["status"] == SKIP          # vpnd has not created them yet
        for i in ("ipsec0", "ipsec1"):
            sh("ip", "-n", ns, "link", "add", i, "type", "veth", "peer", "name", f"{i}p")
        warned = mtu_check(ns, config)
        nft(ns, 'table inet f {\n chain forward {\n type filter hook forward priority 0; '
                'oifname "ipsec*" tcp flags syn tcp option maxseg size set 1360\n }\n}\n')
        clamped = mtu_check(ns, config)
        nft(ns, "flush ruleset\n")
        for i in ("ipsec0", "ipsec1"):
            sh("ip", "-n", ns, "link", "set", i, "mtu", "1400")
        lowered = mtu_check(ns, config)
    assert warned["status"] == WARN and "ipsec0 1500" in warned["detail"]
    assert "maxseg size set 1360" in warned["fix"]
    assert clamped["status"] == PASS and "clamped" in clamped["detail"]
    assert lowered["status"] == PASS


def test_rp_filter_reads_existing_interfaces_and_the_default_for_new_ones(tmp_path):
    config = write_config(tmp_path, route_config())
    with scratch_netns() as ns:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
           "net.ipv4.conf.default.rp_filter=1")
        before = doctor_in(ns, config)[1]["rp_filter"]          # both inherit default=1
        sh("ip", "-n", ns, "link", "add", "ipsec0", "type", "veth", "peer", "name", "ipsec0p")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.ipsec0.rp_filter=2",
           "net.ipv4.conf.default.rp_filter=2")
        after = doctor_in(ns, config)[1]["rp_filter"]
    assert before["status"] == WARN and "ipsec0, ipsec1" in before["detail"]
    assert after["status"] == PASS


@pytest.mark.lab
@pytest.mark.parametrize("routing", ["route", "bgp"])
def test_the_lab_gateway_passes(make_lab, routing):
    """The lab's customer gateway (real charon, its uplink, its config; real FRR in BGP mode)
    is what a working gateway looks like: everything the doctor can check there passes."""
    lab = make_lab(routing=routing)
    config = lab.lab.dir / "doctor.toml"
    text = (lab.lab.dir / "vpnd.toml").read_text()
    if routing == "bgp" and "frr_vty_socket" not in text:     # the lab's FRR keeps its own sockets
        from vpnd_lab.frr import vty_dir
        text = text.replace("[daemon]\n", f'[daemon]\nfrr_vty_socket = "{vty_dir(lab.lab, "cgw")}"\n', 1)
    config.write_text(text)
    config.chmod(0o600)
    r = subprocess.run(["ip", "netns", "exec", lab.lab.ns("cgw"), VPND, "doctor", "-c",
                        str(config), "--json"], capture_output=True, text=True, timeout=60)
    checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    routes = [n for n in checks if n.startswith("route:")]
    assert len(routes) == 2
    assert checks["config"]["status"] in (PASS, WARN)       # the lab uses the vendor's sha1
    for name in ("ip_forward", "vici_socket", "strongswan_version", "ike_ports", "firewall",
                 "rp_filter", *routes):
        assert checks[name]["status"] == PASS, checks[name]
    assert checks["frr"]["status"] == (PASS if routing == "bgp" else SKIP), checks["frr"]
    # the lab's zebra runs with -K, as docs/install.md recommends; only cgw's zebra counts
    assert checks["frr_graceful_restart"]["status"] == (PASS if routing == "bgp" else SKIP), \
        checks["frr_graceful_restart"]


def test_a_check_that_cannot_run_warns_instead_of_crashing():
    def broken():
        raise FileNotFoundError(2, "No such file or directory", "nft")
    r = doctor.guarded("firewall", broken)
    assert r.status == WARN and "FileNotFoundError" in r.detail and r.fix


def _fake_proc(tmp_path, zebras):
    """A /proc with this namespace's link and one zebra per entry (argv, same netns?)."""
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "self" / "ns" / "net").symlink_to("net:[4026531992]")
    for i, (argv, same) in enumerate(zebras, start=100):
        d = proc / str(i)
        (d / "ns").mkdir(parents=True)
        (d / "comm").write_text("zebra\n")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (d / "ns" / "net").symlink_to("net:[4026531992]" if same else "net:[4026532999]")
    (proc / "99").mkdir()
    (proc / "99" / "comm").write_text("bgpd\n")
    return proc


@pytest.mark.parametrize("zebras, status", [
    ([(["/usr/lib/frr/zebra", "-d", "-A", "127.0.0.1", "-s", "90000000"], True)], WARN),
    ([(["/usr/lib/frr/zebra", "-d", "-A", "127.0.0.1", "-K", "60"], True)], PASS),
    ([(["/usr/lib/frr/zebra", "--graceful_restart", "60"], True)], PASS),
    # another namespace's zebra with -K says nothing about ours, which lacks it
    ([(["/usr/lib/frr/zebra", "-K60"], False), (["/usr/lib/frr/zebra"], True)], WARN),
    ([(["/usr/lib/frr/zebra", "-K", "60"], False)], SKIP),
])
def test_zebra_graceful_restart(tmp_path, zebras, status):
    from vpnd.config.load import load_text
    config = load_text(dumps(bgp_config()))
    r = doctor.check_zebra_graceful_restart(config, _fake_proc(tmp_path, zebras))
    assert r.status == status, r
    if status == WARN:
        assert "-K 60" in r.fix and "/etc/frr/daemons" in r.fix
