"""The kernel tier's failover scenarios (issue 5, route-based mode): one guest boot runs
tests/vm/guest_route_failover.py on Debian's kernel, where vpnd owns real XFRM interfaces.

Scenarios (each reported as its own test here, from the guest's junit XML): tunnel 1's data
path black-holed with IKE up -> LAN->VPC moves to tunnel 2 and back after the preempt delay;
tunnel 1's IKE SA killed by the cloud -> immediate switch; vpnd's route deleted by someone
else -> restored within milliseconds (log + counter); vpnd SIGKILLed and restarted -> no route
change at all (`ip monitor route` in cgw). One boot for all: a boot costs 10-15 s under TCG.
"""

from __future__ import annotations

import pytest

from vpnd_testing.guest_session import outcome, run_module, session_passed

pytestmark = pytest.mark.vm

GUEST_FILE = "tests/vm/guest_route_failover.py"


@pytest.fixture(scope="module")
def guest_run(tmp_path_factory):
    return run_module(tmp_path_factory, GUEST_FILE, "failover scenarios", timeout=480)


def test_black_hole_moves_traffic_and_preempt_brings_it_back(guest_run):
    outcome(guest_run, "test_black_hole_moves_traffic_to_tunnel2_and_preempt_brings_it_back")


def test_ike_sa_killed_switches_at_once(guest_run):
    outcome(guest_run, "test_ike_sa_killed_by_the_cloud_switches_at_once")


def test_deleted_route_is_restored(guest_run):
    outcome(guest_run, "test_a_deleted_route_is_restored_within_milliseconds")


def test_vpnd_sigkill_and_restart_change_no_route(guest_run):
    outcome(guest_run, "test_vpnd_sigkilled_and_restarted_changes_no_route")


def test_guest_session_passed(guest_run):
    """Nothing else failed in the guest (fixture errors, collection)."""
    session_passed(guest_run)
