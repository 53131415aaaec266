"""How long a SIGHUP reload takes on the libipsec lab, and what a metrics scrape costs.

Three kinds of reload, each repeated: nothing changed; only the probe interval changed
(charon hears nothing); one tunnel's identity changed (that tunnel is terminated, reloaded
and re-initiated; the cloud side learns the new identity first). Reported: vpnd's own
`duration_ms` (from reading the file to the `config.reloaded` event), the wall time from
SIGHUP to that event, and for the changed tunnel the time until it is established again.
Then the /metrics scrape: bytes and the HTTP time curl measures inside cgw.

    sudo PYTHONPATH=.:tests .venv/bin/python bench/reload.py [-n 10]

The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
import uuid


from vpnd_testing.lab_fixtures import RunningLab
from vpnd.config.load import load_file
from vpnd_lab import scenario
from vpnd_lab.cli import both_established, list_sas, wait_until
from vpnd_lab.topology import Lab


def reload(lab: RunningLab, text: str) -> tuple[dict, float]:
    (lab.lab.dir / "vpnd.toml").write_text(text)
    n = len(lab.events("config.reloaded"))
    t0 = time.monotonic()
    os.kill(lab.vpnd_pid, signal.SIGHUP)
    wait_until("reloaded", lambda: len(lab.events("config.reloaded")) > n, 20, interval=0.002)
    return lab.events("config.reloaded")[-1], time.monotonic() - t0


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10)
    args = ap.parse_args()
    lab = RunningLab(Lab(prefix=f"vb{uuid.uuid4().hex[:6]}"), scenario.Options())
    try:
        lab.config = scenario.up(lab.lab, lab.opts)
        lab.start_vpnd()
        wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
        lab.wait_event("connection.active_changed", active="tunnel1", timeout=30)
        base = (lab.lab.dir / "vpnd.toml").read_text()
        out: dict[str, dict] = {}
        kinds = {
            "unchanged": [base] * args.n,
            "probe_interval": [base.replace("interval = 0.1", f"interval = {0.1 + (i % 2) / 10:g}")
                               for i in range(1, args.n + 1)],
        }
        for kind, texts in kinds.items():
            inner, wall = [], []
            for text in texts:
                e, took = reload(lab, text)
                inner.append(e["duration_ms"])
                wall.append(took * 1000)
            out[kind] = {"duration_ms": med(inner), "wall_ms": med(wall), "n": len(texts)}
        inner, wall, back = [], [], []
        for i in range(args.n):
            ident = f"cgw-t2-{i}.example.net" if i % 2 == 0 else None
            text = base if ident is None else base.replace(
                'name = "tunnel2"\n', f'name = "tunnel2"\nlocal_id = "{ident}"\n')
            nxt = lab.lab.dir / "next.toml"
            nxt.write_text(text)
            scenario.load_cloud(lab.lab, load_file(nxt), lab.opts)
            ups = len(lab.events("tunnel.state_changed", tunnel="tunnel2", to="established"))
            t0 = time.monotonic()
            e, took = reload(lab, text)
            lab.wait_event("tunnel.state_changed", tunnel="tunnel2", to="established", after=ups)
            wait_until("tunnel 2 back", lambda: both_established(lab.lab)
                       and len(list_sas(lab.lab)) == 2, 20, interval=0.002)
            back.append((time.monotonic() - t0) * 1000)
            inner.append(e["duration_ms"])
            wall.append(took * 1000)
        out["one_tunnel_identity"] = {"duration_ms": med(inner), "wall_ms": med(wall),
                                      "reestablished_ms": med(back), "n": args.n}
        sizes, times = [], []
        for _ in range(args.n):
            r = lab.lab.exec("cgw", "curl", "-sf", "-o", "/dev/null", "-w",
                             "%{size_download} %{time_total}", "http://127.0.0.1:9456/metrics")
            size, t = r.stdout.split()
            sizes.append(int(size))
            times.append(float(t) * 1000)
        out["scrape"] = {"bytes": max(sizes), "http_ms": med(times), "n": args.n}
        for k, v in out.items():
            print(f"{k:<22} {v}")
        print(json.dumps(out))
        return 0
    finally:
        lab.lab.destroy()


if __name__ == "__main__":
    sys.exit(main())
