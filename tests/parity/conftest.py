"""Fast level-based timers and a free metrics port for the in-process operator (read when
cambrian.operator.handlers is imported), as in tests/operator and tests/e2e."""

from __future__ import annotations

import os

os.environ.setdefault("CAMBRIAN_OPERATOR_INTERVAL", "1")
os.environ.setdefault("CAMBRIAN_METRICS_PORT", "0")
os.environ.setdefault("CAMBRIAN_METRICS_ADDR", "127.0.0.1")
