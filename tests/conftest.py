"""Test set-up shared by every room.

Fixtures live in tests/fixtures/<room>.py, one module per room, registered
below as pytest plugins, so work on one room does not touch another's.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = [
    "fixtures.core",
    "fixtures.ingest",
    "fixtures.model",
    "fixtures.store",
    "fixtures.api",
    "fixtures.finetune",
    "fixtures.loop",
]
