"""Issue 16, host tier (libipsec + VXLAN per tunnel, tunnel interface MTU 1300): vpnd's
path-MTU prober measures each tunnel on its own. Tunnel 2 gets a narrower hop: the cloud
drops every packet over 1200 bytes arriving through vxlan2, silently (no "fragmentation
needed", as on Internet paths that filter ICMP). Expected: tunnel 1 measures 1300 (one
probe), tunnel 2 measures 1200 exactly, and the MSS clamp through vxlan2 follows it down
to 1160 while vxlan1's stays 1260; `vpnd doctor` reports both; a switch (drain) measures
both again. Prints the search figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vpnd_lab.cli import both_established, wait_until
from vpnd_lab.scenario import nft

pytestmark = pytest.mark.lab
VPND = str(Path(sys.executable).with_name("vpnd"))

NARROW_HOP = """table ip labpmtu {
  chain narrow {
    type filter hook prerouting priority -300; policy accept;
    iifname "vxlan2" ip length > 1200 drop
  }
}
"""


def test_path_mtu_measured_per_tunnel_and_clamp_follows(make_lab):
    lab = make_lab()
    nft(lab.lab, "cloud", NARROW_HOP)
    lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    found = {}
    for tunnel in ("tunnel1", "tunnel2"):
        e = lab.wait_event("path_mtu.measured", timeout=60, tunnel=f"vpc1/{tunnel}")
        found[tunnel] = e
    assert found["tunnel1"]["path_mtu"] == 1300, found
    assert found["tunnel1"]["probes"] == 1, found
    assert found["tunnel2"]["path_mtu"] == 1200, found
    wait_until("vxlan2's clamp lowered to 1160", lambda: 'oifname "vxlan2" tcp flags syn tcp option '
               'maxseg size > 1160' in lab.lab.exec("cgw", "nft", "list", "chain", "inet", "vpnd",
                                                     "mss-vpc1").stdout, 20)
    rules = lab.lab.exec("cgw", "nft", "list", "chain", "inet", "vpnd", "mss-vpc1").stdout
    assert 'oifname "vxlan1" tcp flags syn tcp option maxseg size > 1260' in rules
    # `vpnd doctor` reports the figures the running vpnd measured (status' data_path)
    r = subprocess.run(["ip", "netns", "exec", lab.lab.ns("cgw"), VPND, "doctor", "-c",
                        str(lab.lab.dir / "vpnd.toml"), "--json"], capture_output=True, text=True,
                       timeout=60)
    checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    pm = checks["path_mtu"]
    assert pm["status"] == "PASS", pm
    assert "vpc1/tunnel1 1300 (interface 1300, MSS clamp 1260)" in pm["detail"], pm
    assert "vpc1/tunnel2 1200 (interface 1300, MSS clamp 1160)" in pm["detail"], pm
    print(f"\ndoctor: {pm['detail']}")
    # a switch measures both tunnels again (the path may have changed)
    n = len(lab.events("path_mtu.measured"))
    sock = str(lab.lab.dir / "control.sock")
    r = subprocess.run([VPND, "drain", "tunnel1", "--socket", sock], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "active tunnel: tunnel2" in r.stdout, r
    again = lab.wait_event("path_mtu.measured", timeout=20, after=n + 1)
    after = lab.events("path_mtu.measured")[n:]
    assert {e["tunnel"]: e["path_mtu"] for e in after} == {"vpc1/tunnel1": 1300,
                                                          "vpc1/tunnel2": 1200}, after
    assert again
    print("\npath MTU per tunnel: " + json.dumps(
        {t: {k: e[k] for k in ("path_mtu", "interface_mtu", "probes", "seconds")}
         for t, e in found.items()}))
