"""The gateway process never imports torch or transformers (it runs on small CPU pods)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from serving.config import load_config
import serving.cli, serving.gateway.app as app, loraplane.demo, loraplane.cli
cfg = load_config(None, {"registry.models_dir": sys.argv[1]})
app.create_app(cfg, ["http://127.0.0.1:9"])
heavy = sorted(m for m in ("torch", "transformers", "peft", "vllm", "trainer") if m in sys.modules)
print(",".join(heavy))
"""


def test_gateway_imports_no_torch(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"gateway process imported: {out.stdout.strip()}"
