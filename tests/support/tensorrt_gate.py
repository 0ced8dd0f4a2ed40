"""GPU CI that cannot pass by skipping: with DANET_DEPLOY_REQUIRE_TENSORRT=1 (set by .github/workflows/gpu.yml and
docker/Dockerfile) a `tensorrt` test that is skipped, or a run in which none ran, fails the session.

tests/conftest.py feeds pytest's reports to `TensorRTGate`; test_tensorrt_gpu.py also fails each of its tests
(instead of skipping them) when TensorRT or the GPU is missing under this variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

REQUIRE_VARIABLE = "DANET_DEPLOY_REQUIRE_TENSORRT"


def tensorrt_required(environ: Mapping[str, str] | None = None) -> bool:
    return (os.environ if environ is None else environ).get(REQUIRE_VARIABLE, "") not in ("", "0")


@dataclass
class TensorRTGate:
    required: bool
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def report(self, nodeid: str, keywords: Mapping[str, object], when: str, outcome: str) -> None:
        """One pytest test report (setup / call / teardown) of any test."""
        if "tensorrt" not in keywords:
            return
        if outcome == "skipped":
            self.skipped.append(nodeid)
        elif when == "call":
            self.ran.append(nodeid)

    def failure(self, tensorrt_selected: bool) -> str | None:
        """Why the session must fail, or None."""
        if not self.required:
            return None
        if self.skipped:
            return f"{REQUIRE_VARIABLE}=1 but {len(self.skipped)} tensorrt test(s) skipped: {', '.join(self.skipped)}"
        if tensorrt_selected and not self.ran:
            return f"{REQUIRE_VARIABLE}=1 but no tensorrt test ran"
        return None
