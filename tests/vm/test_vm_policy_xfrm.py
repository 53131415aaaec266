"""Policy mode on kernel XFRM (the real gateway's charon kernel-netlink), in the kernel tier:
one guest boot runs tests/vm/guest_policy_xfrm.py on Debian's kernel.

Scenarios (each reported as its own test here, from the guest's junit XML): which CHILD SA
carries LAN -> VPC with priorities 1/2 (kernel policy template + charon's counters); a rekey
of the standby does not take the traffic; tunnel 1's ESP black-holed with IKE up -> traffic on
tunnel 2, back after the preempt delay; the cloud sending on tunnel 2 -> XfrmInTmplMismatch
rises and vpnd follows; vpnd SIGKILLed and restarted -> it adopts what the kernel uses, no
CHILD SA replaced; on a priority tie the newest CHILD SA takes the kernel policy. One boot for
all: a boot costs 10-15 s under TCG.
"""

from __future__ import annotations

import pytest

from vpnd_testing.guest_session import outcome, run_module, session_passed

pytestmark = pytest.mark.vm

GUEST_FILE = "tests/vm/guest_policy_xfrm.py"


@pytest.fixture(scope="module")
def guest_run(tmp_path_factory):
    return run_module(tmp_path_factory, GUEST_FILE, "policy-mode scenarios", timeout=420)


def test_priority_1_child_carries(guest_run):
    outcome(guest_run, "test_both_children_share_one_kernel_policy_and_priority_1_carries")


def test_standby_rekey_keeps_traffic(guest_run):
    outcome(guest_run, "test_a_rekey_of_the_standby_does_not_take_the_traffic")


def test_black_hole_failover_and_preempt(guest_run):
    outcome(guest_run, "test_black_hole_moves_traffic_to_tunnel2_and_preempt_brings_it_back")


def test_cloud_move_counts_in_tmpl_mismatch_and_is_followed(guest_run):
    outcome(guest_run, "test_the_cloud_sending_on_tunnel2_counts_in_tmpl_mismatch_and_vpnd_follows")


def test_restart_adopts_what_the_kernel_uses(guest_run):
    outcome(guest_run, "test_vpnd_sigkilled_and_restarted_adopts_what_the_kernel_uses")


def test_on_a_priority_tie_the_newest_child_sa_wins(guest_run):
    outcome(guest_run, "test_on_a_priority_tie_the_newest_child_sa_takes_the_policy")


def test_guest_session_passed(guest_run):
    """Nothing else failed in the guest (fixture errors, collection)."""
    session_passed(guest_run)
