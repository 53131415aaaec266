"""`vpnd run`: load and check the configuration, set up logging, run the daemon until stopped.

An invalid file is refused here, before anything is touched, with every problem named by its
key (exit 1); no traceback reaches the operator.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vpnd import logs
from vpnd.config.model import ConfigError


def main(args: Any) -> int:
    from vpnd.config.load import load_file_with_warnings

    try:
        # trusted files only (vpnd.config.trust), as on reload and in `vpnd check`
        config = load_file_with_warnings(args.config, strict_permissions=True)[0]
    except ConfigError as err:
        for p in err.errors:
            print(f"error: {p}", flush=True)
        return 1
    logs.configure(config.daemon.log_format, config.daemon.log_level)
    logs.register_secrets(t.psk.reveal() for c in config.connections for t in c.tunnels)
    from vpnd.run.daemon import Daemon

    return asyncio.run(Daemon(config).run())
