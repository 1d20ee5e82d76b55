"""What the api process loads: no broker client, no torch (it ships in the small image)."""

from __future__ import annotations

import subprocess
import sys

# Imported by the app factory and every route; a broker or GPU stack here would mean the api
# depends on Redis being up or carries torch into its image.
FORBIDDEN = ("celery", "kombu", "redis", "torch", "diffusers")

PROBE = """
import sys
from api.app import create_app
from shared.settings import Settings
create_app(Settings(data_dir=sys.argv[1]))
print(" ".join(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))))
"""


def test_api_app_imports_no_broker_and_no_torch(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), *FORBIDDEN],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "", f"the api loaded {result.stdout.strip()}"
