"""No pre-shared key in any log line, metric or render without --show-secrets.

vpnd runs at debug level in the lab, a reload rotates tunnel 2's key (a key-only change goes
through vpnd's PSK rotation, vpnd.run.rotation, so the new key passes through load-shared and
the rotation's log lines too), then the log, a metrics scrape and every render are searched for
both the old and the new keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_reload import reload, scrape, up
from vpnd_lab import scenario

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]


def render(what: str, config: Path, *extra: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "vpnd", "render", what, "-c", str(config), *extra],
                       capture_output=True, text=True, timeout=60, env=env)
    return r.stdout + r.stderr


def test_no_psk_in_logs_metrics_or_renders(make_lab):
    from vpnd.config.load import load_file

    lab = make_lab()
    conf = lab.lab.dir / "vpnd.toml"
    conf.write_text(conf.read_text().replace('log_format = "json"',
                                             'log_format = "json"\nlog_level = "debug"'))
    keys = [(lab.lab.dir / f"tunnel{i}.psk").read_text().strip() for i in (1, 2)]
    up(lab)
    rotated = lab.lab.dir / "tunnel2-next.psk"
    rotated.write_text("rotated-lab-key-9Wm2-" + lab.lab.prefix + "\n")
    rotated.chmod(0o600)
    keys.append(rotated.read_text().strip())
    new_text = conf.read_text().replace("tunnel2.psk", "tunnel2-next.psk")
    nxt = lab.lab.dir / "next.toml"
    nxt.write_text(new_text)
    scenario.load_cloud(lab.lab, load_file(nxt), lab.opts)
    event, _ = reload(lab, lambda t: new_text)
    assert event["event"] == "config.reloaded"
    assert event["psk_rotation"] == ["vpc1.tunnel2"], event
    ended = lab.wait_event("psk.rotation_ended", timeout=30)
    assert ended["phase"] == "done", ended
    log = lab.log.read_text()
    assert '"level": "debug"' in log, "debug lines were written"
    outputs = {"log": log, "metrics": scrape(lab)}
    for what in ("swanctl", "peer", "frr"):
        outputs[f"render {what}"] = render(what, conf)
    for name, text in outputs.items():
        for k in keys:
            assert k not in text, f"a PSK leaked into {name}"
    shown = render("swanctl", conf, "--show-secrets") + render("peer", conf, "--show-secrets")
    assert keys[0] in shown and keys[2] in shown, "--show-secrets does show them"
