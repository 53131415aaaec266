"""`vpnd render {swanctl,frr,peer,nft}`: show what vpnd applies, from the same code that applies it.

swanctl: what vpnd loads into charon (vpnd.render.swanctl); frr: the FRR configuration it
applies in BGP mode (vpnd.render.frr); peer: the cloud side's parameter sheet, the mirror
image of ours (vpnd.render.peer); nft: the MSS clamp (vpnd.render.nft). Pre-shared keys print as ******** unless --show-secrets.
"""

from __future__ import annotations

import sys


def render(what: str, config, show_secrets: bool = False) -> str:
    """The text for one `what`; raises swanctl.RenderError when it does not apply."""
    if what == "swanctl":
        from vpnd.render.swanctl import swanctl_text
        return swanctl_text(config, show_secrets=show_secrets)
    if what == "frr":
        from vpnd.render.frr import frr_config, return_path_notes
        return frr_config(config).text() + return_path_notes(config)
    if what == "peer":
        from vpnd.render.peer import peer_text
        return peer_text(config, show_secrets=show_secrets)
    if what == "nft":
        from vpnd.render.nft import nft_text
        return nft_text(config)
    raise ValueError(f"unknown rendering {what!r}")


def main(args) -> int:
    from vpnd.config.load import load_file
    from vpnd.config.model import ConfigError
    from vpnd.render.swanctl import RenderError

    try:
        config = load_file(args.config)
    except ConfigError as e:
        for problem in e.errors:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        text = render(args.what, config, getattr(args, "show_secrets", False))
    except RenderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
