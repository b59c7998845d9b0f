"""Attached containers, as `weave attach` registered them, persisted in the state dir.

Theory of operation: the CLI does the netlink work of attaching a container (it runs in
the user's context and knows the container); it then tells the router, which keeps the
list so that `weave ps` can show it and so that it survives `weave stop`/`launch`.  The
store is a JSON file rewritten atomically (write to a temp file, then rename).
"""

from __future__ import annotations

import json
import os
from typing import cast

from pyweave.router.api_types import Attachment


class AttachmentStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self.items: dict[str, Attachment] = {}
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path) as f:
                raw = json.load(f)
        except (OSError, ValueError):
            return
        if isinstance(raw, dict):
            for key, value in raw.items():
                if isinstance(value, dict) and "mac" in value and "cidrs" in value:
                    self.items[str(key)] = cast(Attachment, value)

    def _save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.items, f, indent=1)
        os.replace(tmp, self.path)

    def put(self, attachment: Attachment) -> None:
        self.items[attachment["container"]] = attachment
        self._save()

    def remove(self, container: str) -> Attachment | None:
        removed = self.items.pop(container, None)
        if removed is not None:
            self._save()
        return removed

    def list(self) -> list[Attachment]:
        return list(self.items.values())
