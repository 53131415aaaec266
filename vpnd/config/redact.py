"""Config problems never quote a key: a PSK pasted into another field (an id, a mode, an
address) would otherwise come back in the error, on a terminal or in the journal.

One pass over every problem once the file is read, so no getter has to know which values are
secret: each configured key (inline or from its psk_file) is replaced by MASK wherever it
appears, also cut short by the loader's "..." truncation of long values. A key shorter than
SUBSTRING_MIN characters is masked only as a whole word (as in the logs: masking it inside
other words would mangle the message and show the key by what disappears).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from vpnd.config.model import Problem

MASK = "********"
SUBSTRING_MIN = 8


def mask_problems(problems: Iterable[Problem], secrets: Iterable[str]) -> list[Problem]:
    keys = sorted({s for s in secrets if s}, key=len, reverse=True)
    return [Problem(mask_text(p.path, keys), mask_text(p.message, keys)) for p in problems]


def mask_text(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        if len(s) < SUBSTRING_MIN:
            text = re.sub(r"(?<![A-Za-z0-9])" + re.escape(s) + r"(?![A-Za-z0-9])", MASK, text)
            continue
        text = text.replace(s, MASK)
        # a long value is shown as its first characters and "...": mask such a prefix too
        for n in range(len(s) - 1, SUBSTRING_MIN - 1, -1):
            if s[:n] + "..." in text:
                text = text.replace(s[:n] + "...", MASK + "...")
                break
    return text
