"""Reading a PUT's document, validating only the sections that changed.

Validating a whole document builds Python objects for every address and rule: about 95 ms for
1,000 floating IPs and 5,000 firewall rules, nearly all of it for sections a change did not
touch. The reader keeps the decoded JSON of the documents it returned; a section of a new
document whose JSON equals that of the applied document's is handed to pydantic as the
applied document's validated section (a model instance is accepted as it is), so only the
changed sections are validated. Unchanged sections are then the very same objects, which
lets the subsystems skip comparing them (``is`` instead of a walk over 5,000 rules).

JSON equality is Python's (``1 == 1.0 == true``), which pydantic's lax validation treats
alike too: a section it would accept from either text is the same section.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from astara.wire.document import ApplianceConfig

# Documents whose JSON is kept: the applied one survives one newer document that failed.
KEPT_DOCUMENTS = 2


@dataclass(frozen=True)
class _Read:
    config: ApplianceConfig
    raw: dict[str, Any]


class DocumentReader:
    """Validates decoded JSON documents, reusing the unchanged sections of the applied one."""

    def __init__(self, kept: int = KEPT_DOCUMENTS) -> None:
        self._recent: deque[_Read] = deque(maxlen=kept)
        self._lock = threading.Lock()  # PUTs are served by several threads

    def read(self, raw: Any, applied: ApplianceConfig | None) -> ApplianceConfig:
        """The document ``raw`` (decoded JSON) describes; pydantic's ValidationError if none.

        ``applied``: the engine's current document. Any document this reader returned would
        do (equal JSON is an equal section), the applied one is the one worth matching.
        """
        with self._lock:
            base = next((r for r in self._recent if r.config is applied), None)
        data = raw
        if base is not None and isinstance(raw, dict):
            data = {
                name: getattr(base.config, name)
                if name in ApplianceConfig.model_fields and base.raw.get(name, _ABSENT) == value
                else value
                for name, value in raw.items()
            }
        config = ApplianceConfig.model_validate(data)
        if isinstance(raw, dict):
            with self._lock:
                self._recent.append(_Read(config, raw))
        return config


_ABSENT = object()
