"""The one JSON response class of the API."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse


class ApiResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: text that came from a client (a parameter
    name, metadata, a message quoting a value) may hold a lone surrogate, which JSON can
    escape (``\\ud800``) but no UTF-8 encoder can write."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")
