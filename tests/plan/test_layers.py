"""The planner's layer rule: the engine and slo as a library, bench's workloads; never the server or Ray."""

from __future__ import annotations

import subprocess
import sys


def test_the_planner_imports_neither_the_server_nor_ray():
    code = ("import sys, servewise.plan, servewise.plan.planner, servewise.plan.profiler, servewise.plan.compare\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('servewise.server', 'ray', 'fastapi', 'uvicorn')))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
