"""`vpnd import alibaba`: write a vpnd configuration and one PSK file per tunnel from the
cloud's own description of an IPsec-VPN connection (the SDK, or a saved JSON response).

Nothing is overwritten without --force, and nothing is written at all if anything fails
(the keys first, each 0600 in a directory made 0700, then the config, each by rename). The
keys are never printed. What the cloud cannot know stays a `<fill in: ...>` placeholder that
`vpnd check` refuses by saying what to fill in.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any, TextIO

from vpnd.cloud import alibaba
from vpnd.config.model import DEFAULT_CONFIG

RESPONSE_MAX_BYTES = 1 << 20


def add_parser(sub) -> None:
    """`vpnd import alibaba ...` (the dispatcher calls this; the arguments are ours)."""
    p = sub.add_parser("import", help="write a config and PSK files from the cloud's own "
                                      "description of a connection")
    clouds = p.add_subparsers(dest="cloud", required=True)
    a = clouds.add_parser("alibaba", help="an Alibaba Cloud IPsec-VPN connection "
                                          "(DescribeVpnConnection)")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--response", metavar="FILE",
                     help="a saved DescribeVpnConnection JSON response (no SDK needed)")
    src.add_argument("--connection-id", metavar="VCO_ID",
                     help="ask the API (vpnd[alibaba]); credentials from the vendor's "
                          "default chain: environment, ~/.alibabacloud/credentials, RAM role")
    a.add_argument("--region", help="the connection's region, e.g. cn-hangzhou (with "
                                    "--connection-id)")
    a.add_argument("--endpoint", help="the API endpoint (default vpc.REGION.aliyuncs.com)")
    a.add_argument("-o", "--output", default=DEFAULT_CONFIG, help="the config file to write "
                   f"(default {DEFAULT_CONFIG})")
    a.add_argument("--psk-dir", help="where the PSK files go (default: psk/ beside the config; "
                                     "created 0700)")
    a.add_argument("--force", action="store_true", help="overwrite existing files")
    a.add_argument("--name", help="the connection's name in vpnd (default: the cloud's)")
    a.add_argument("--local-address", action="append", default=[], metavar="IP",
                   help="our IKE address (once for both tunnels, or once per tunnel)")
    a.add_argument("--local-network", action="append", default=[], metavar="CIDR",
                   help="an on-premises CIDR (when the cloud routes by destination)")
    a.add_argument("--remote-network", action="append", default=[], metavar="CIDR",
                   help="a VPC CIDR (when the cloud routes by destination)")
    a.add_argument("--interface", action="append", default=[], metavar="NAME",
                   help="tunnel interface names, in tunnel order (default ipsec0, ipsec1)")
    a.add_argument("--underlay", metavar="DEV", help="the XFRM interfaces' underlay device")
    a.add_argument("--probe-source", metavar="IP", help="health check: our address to probe from")
    a.add_argument("--probe-destination", metavar="IP",
                   help="health check: a VPC address that answers ping")


def main(args: Any, out: TextIO | None = None, err: TextIO | None = None,
         credential: Any = None, protocol: str = "https") -> int:
    """`credential`/`protocol` exist for tests (a static key, a local HTTP endpoint); the
    command line never takes credentials."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        response, gateways, source = _read(args, credential, protocol)
        side = alibaba.CustomerSide(
            name=args.name, local_addresses=tuple(args.local_address),
            local_networks=tuple(args.local_network), remote_networks=tuple(args.remote_network),
            interfaces=tuple(args.interface), underlay=args.underlay,
            probe_source=args.probe_source, probe_destination=args.probe_destination,
            gateway_addresses=gateways)
        imp = alibaba.from_response(response, side)
        written = _write(args, imp, source)
    except alibaba.CloudImportError as exc:
        print(f"vpnd import: {exc}", file=err)
        return 1
    except OSError as exc:
        print(f"vpnd import: {exc.filename or ''}: {exc.strerror or exc}", file=err)
        return 1
    config_path, psk_paths = written
    mode = imp.doc["routing"]
    print(f"vpnd import: wrote {config_path} ({mode} mode, {len(psk_paths)} tunnel"
          f"{'s' if len(psk_paths) != 1 else ''}) and {len(psk_paths)} PSK file"
          f"{'s' if len(psk_paths) != 1 else ''} (mode 0600, keys not shown):", file=out)
    for t, path in zip(imp.doc["tunnel"], psk_paths):
        c = next((c for c in imp.cloud if c["tunnel"] == t["name"]), {})
        state = ", ".join(f"{k} {c[k]}" for k in ("Role", "State", "Status") if c.get(k))
        print(f"  {t['name']}: {t['remote_address']}  psk ******** in {path}"
              + (f"  (cloud: {state})" if state else ""), file=out)
    for note in imp.notes:
        print(f"note: {note}", file=out)
    if imp.placeholders:
        print(f"{len(imp.placeholders)} value{'s' if len(imp.placeholders) != 1 else ''} to "
              f"fill in (marked FILL IN; `vpnd check` refuses them until then):", file=out)
        for what in imp.placeholders:
            print(f"  - {what}", file=out)
    print(f"next: vpnd check -c {config_path}", file=out)
    return 0


def _read(args: Any, credential: Any, protocol: str) -> tuple[dict, dict, str]:
    if args.response:
        try:
            with open(args.response, "rb") as f:
                raw = f.read(RESPONSE_MAX_BYTES + 1)
        except OSError as exc:
            raise alibaba.CloudImportError(f"{args.response}: {exc.strerror or exc}") from None
        if len(raw) > RESPONSE_MAX_BYTES:
            raise alibaba.CloudImportError(f"{args.response}: larger than {RESPONSE_MAX_BYTES} "
                                           "bytes: not a DescribeVpnConnection response")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise alibaba.CloudImportError(f"{args.response}: not JSON ({exc})") from None
        return data, {}, args.response
    if not args.region:
        raise alibaba.CloudImportError("--connection-id needs --region (e.g. cn-hangzhou)")
    body, gateways = alibaba.fetch(args.connection_id, args.region, endpoint=args.endpoint,
                                   credential=credential, protocol=protocol)
    return body, gateways, f"DescribeVpnConnection {args.connection_id} ({args.region})"


def _write(args: Any, imp: alibaba.Imported, source: str) -> tuple[str, list[str]]:
    config_path = os.path.abspath(args.output)
    conf_dir = os.path.dirname(config_path)
    psk_dir = os.path.abspath(args.psk_dir) if args.psk_dir else os.path.join(conf_dir, "psk")
    psk_paths = [os.path.join(psk_dir, f"{imp.name}-{t['name']}.psk") for t in imp.doc["tunnel"]]
    existing = [p for p in [config_path, *psk_paths] if os.path.lexists(p)]
    if existing and not args.force:
        raise alibaba.CloudImportError(f"{', '.join(existing)} exist{'s' if len(existing) == 1 else ''}"
                                       "; nothing written (--force overwrites)")
    for t, path in zip(imp.doc["tunnel"], psk_paths):
        rel = os.path.relpath(path, conf_dir)
        t["psk_file"] = rel if not rel.startswith("..") else path
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = alibaba.render(imp, [
        f"Imported by `vpnd import alibaba` from {source} at {stamp}.",
        "Keys are in the psk_file files (0600). Values marked FILL IN are ours, which the cloud",
        "cannot know; `vpnd check -c` this file refuses them until they are filled in.",
        "docs/import.md: where each of the cloud's fields went. docs/configuration.md: every key.",
    ], region=getattr(args, "region", None))
    os.makedirs(conf_dir, exist_ok=True)
    if not os.path.isdir(psk_dir):
        os.makedirs(psk_dir, mode=0o700)
        os.chmod(psk_dir, 0o700)            # whatever the umask
    for psk, path in zip(imp.psks, psk_paths):
        _atomic(path, psk + "\n")
    _atomic(config_path, text)
    return config_path, psk_paths


def _atomic(path: str, text: str) -> None:
    """Write by rename: a reader sees the old file or the new one, never half; 0600 from the
    start (mkstemp), so a key is never readable by others even for a moment."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".vpnd-import-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
