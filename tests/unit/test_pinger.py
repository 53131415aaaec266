"""The lab pinger's outage figure: the time without answers, even when ping slows down."""

from vpnd_lab.pinger import parse


def reply(t: float, seq: int) -> str:
    return f"[{t:.6f}] 64 bytes from 192.168.0.10: icmp_seq={seq} ttl=63 time=0.2 ms"


def test_outage_is_the_time_between_answers_not_the_lost_count():
    lines = [reply(100 + i * 0.01, i) for i in range(1, 11)]
    # 30 packets lost, sent slower than asked (iputils backs off while unanswered): 0.9 s.
    lines += [reply(101.0, 41), "41 packets transmitted, 11 received"]
    assert parse("\n".join(lines), 0.01).outage_ms == 890.0


def test_no_loss_is_no_outage_and_a_trailing_run_counts():
    lines = [reply(100 + i * 0.01, i) for i in range(1, 21)]
    assert parse("\n".join(lines + ["20 packets transmitted, 20 received"]), 0.01).outage_ms == 0.0
    report = parse("\n".join(lines + ["30 packets transmitted, 20 received"]), 0.01)
    assert report.outage_ms == 100.0 and report.sent == 30 and report.received == 20
