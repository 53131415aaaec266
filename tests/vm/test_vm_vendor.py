"""Issue 13 on the kernel tier: one guest boot runs tests/vm/guest_vendor_both_ways.py on
Debian's kernel against the vendor cloud model (the cloud's own XFRM interfaces cloud0/cloud1,
its health check 1 s x 3; BGP mode with timers 10/30, no BFD, the more-specific return path).

Scenarios (each its own test here, from the guest's junit XML): tunnel 1 black-holed both ways,
LAN->VPC dropped only, VPC->LAN dropped only, IKE alive / ESP dead (route mode), black-holed
both ways (BGP mode). Each: traffic both ways again, tunnel 2 never shown unusable because of
tunnel 1's failure, back on tunnel 1 after the repair. The figures (printed: "guest figures")
are ratios to vpnd's probe budget measured in the same guest; docs/lab-vm.md has them.
"""

from __future__ import annotations

import pytest

from vpnd_testing.guest_session import outcome, run_module, session_passed

pytestmark = pytest.mark.vm

GUEST_FILE = "tests/vm/guest_vendor_both_ways.py"


@pytest.fixture(scope="module")
def guest_run(tmp_path_factory):
    return run_module(tmp_path_factory, GUEST_FILE, "vendor-model scenarios", timeout=1500)


@pytest.mark.parametrize("name", [
    "test_route_tunnel1_black_holed_both_ways",
    "test_route_lan_to_vpc_dropped_only",
    "test_route_vpc_to_lan_dropped_only",
    "test_route_ike_alive_esp_dead",
    "test_bgp_tunnel1_black_holed_both_ways",
])
def test_scenario(guest_run, name):
    outcome(guest_run, name)


def test_guest_session_passed(guest_run):
    """Nothing else failed in the guest (fixture errors, collection)."""
    session_passed(guest_run)
