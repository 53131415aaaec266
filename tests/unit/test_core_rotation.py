"""vpnd.core.rotation: one tunnel at a time, a clear state when the cloud is not changed yet."""

from vpnd.core import rotation as R


def run(r, outcomes):
    """Feed (outcome, time) pairs; return the final state and every step batch."""
    batches = []
    for outcome, now in outcomes:
        r, steps = R.step(r, outcome, now)
        batches.append(steps)
    return r, batches


def test_both_tunnels_in_order_each_drained_rekeyed_proven_restored():
    r, steps = R.start("vpc1", ("tunnel1", "tunnel2"), 0.0)
    assert steps == [R.Drain("tunnel1")] and r.phase == "draining"
    r, b = run(r, [(R.Done(), 0.1), (R.Done(), 0.2), (R.Done(), 1.0), (R.Done(), 1.1)])
    assert b[0] == [R.LoadKey("tunnel1", "new"), R.Reauthenticate("tunnel1")]
    assert b[1] == [R.Prove("tunnel1")]
    assert b[2] == [R.Commit("tunnel1"), R.Undrain("tunnel1")]
    assert b[3] == [R.Drain("tunnel2")] and r.tunnel == "tunnel2" and r.phase == "draining"
    assert r.results == (R.TunnelResult("tunnel1", 1.1, 1),)
    r, b = run(r, [(R.Done(), 1.2), (R.Done(), 1.3), (R.Done(), 2.0), (R.Done(), 2.5)])
    assert r.phase == "done" and r.final and b[-1] == []
    assert [x.tunnel for x in r.results] == ["tunnel1", "tunnel2"]
    assert r.status(3.0)["pending"] == [] and r.status(3.0)["tunnel"] is None


def test_phase_1_refused_waits_for_the_cloud_with_the_old_key_and_retries_with_backoff():
    r, _ = R.start("vpc1", ("tunnel1", "tunnel2"), 0.0)
    r, b = run(r, [(R.Done(), 0.1), (R.Failed("authentication failed at the peer", auth_failed=True), 0.5)])
    assert r.phase == "waiting_for_cloud" and "cloud side still has the old one" in r.reason
    assert b[-1] == [R.LoadKey("tunnel1", "old"), R.WaitUntil(0.5 + R.RETRY_FIRST)]
    assert r.status(1.0)["pending"] == ["tunnel1", "tunnel2"]
    # an early tick changes nothing; the retry loads the new key again
    r, b = run(r, [(R.Tick(), 5.0)])
    assert r.phase == "waiting_for_cloud" and b[0] == [R.WaitUntil(0.5 + R.RETRY_FIRST)]
    r, b = run(r, [(R.Tick(), 10.5)])
    assert r.phase == "rekeying" and r.attempts == 2
    assert b[0] == [R.LoadKey("tunnel1", "new"), R.Reauthenticate("tunnel1")]
    r, b = run(r, [(R.Failed("x", auth_failed=True), 11.0)])
    assert b[0] == [R.LoadKey("tunnel1", "old"), R.WaitUntil(11.0 + 2 * R.RETRY_FIRST)]
    # the cloud is changed now: the tunnel goes on, tunnel2 never touched before
    r, b = run(r, [(R.Tick(), 31.0), (R.Done(), 31.1), (R.Done(), 32.0), (R.Done(), 32.1)])
    assert b[-1] == [R.Drain("tunnel2")] and r.results[0].attempts == 3


def test_backoff_is_bounded():
    assert R.backoff(1) == R.RETRY_FIRST and R.backoff(50) == R.RETRY_MAX


def test_an_unproven_tunnel_stops_the_rotation_before_the_next_one():
    r, _ = R.start("vpc1", ("tunnel1", "tunnel2"), 0.0)
    r, b = run(r, [(R.Done(), 0.1), (R.Done(), 0.2), (R.Failed("probes lost"), 20.0)])
    assert r.phase == "failed" and b[-1] == [R.LoadKey("tunnel1", "old")]
    assert all(not isinstance(s, R.Drain) or s.tunnel != "tunnel2" for x in b for s in x)
    assert R.step(r, R.Done(), 21.0) == (r, [])


def test_abort_puts_the_old_key_back_and_lets_traffic_return():
    r, _ = R.start("vpc1", ("tunnel1", "tunnel2"), 0.0)
    r, b = run(r, [(R.Done(), 0.1), (R.Failed("x", auth_failed=True), 0.5), (R.Abort(), 3.0)])
    assert r.phase == "aborted" and b[-1] == [R.LoadKey("tunnel1", "old"), R.Undrain("tunnel1")]


def test_a_tunnel_the_operator_had_drained_stays_drained():
    r, _ = R.start("vpc1", ("tunnel1",), 0.0, already_drained=frozenset({"tunnel1"}))
    r, b = run(r, [(R.Done(), 0.1), (R.Done(), 0.2), (R.Done(), 1.0)])
    assert b[-1] == [R.Commit("tunnel1")]
    r, b = run(r, [(R.Done(), 1.0), (R.Abort(), 2.0)])
    assert r.phase == "done"


def test_status_holds_no_key_material():
    r, _ = R.start("vpc1", ("tunnel1", "tunnel2"), 0.0)
    assert set(r.status(1.0)) == {"connection", "tunnel", "phase", "for_s", "attempts", "retry_at",
                                  "reason", "rotated", "pending"}
