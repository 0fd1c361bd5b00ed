"""The machine a benchmark ran on (CPU model, cores, load, torch build and threads), for every result."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Machine:
    """Where and when a benchmark ran; ``shared_note`` says that the CPU was shared when it was."""

    host: str
    cpu_model: str
    cpus: int
    load_average: float  # 1-minute load at the start
    python: str
    torch: str
    torch_threads: int
    omp_wait_policy: str
    device: str
    gpu: str
    when_utc: str

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON output."""
        return asdict(self)

    def heading(self) -> str:
        """One Markdown heading line naming the machine and the time."""
        gpu = f", GPU {self.gpu}" if self.gpu else ""
        return (
            f"### {self.when_utc} UTC - {self.cpu_model} ({self.cpus} CPUs{gpu}), torch {self.torch}, "
            f"{self.torch_threads} threads, device {self.device}, "
            f"load average {self.load_average:.1f} at start"
        )


def cpu_model() -> str:
    """``lscpu``'s model name (falls back to /proc/cpuinfo, then platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info(device: str = "cpu") -> Machine:
    """Describe this machine now (torch is imported here, so call it after setting thread options)."""
    import torch

    gpu = ""
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return Machine(
        host=platform.node(),
        cpu_model=cpu_model(),
        cpus=os.cpu_count() or 1,
        load_average=os.getloadavg()[0],
        python=platform.python_version(),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(default)"),
        device=device,
        gpu=gpu,
        when_utc=f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
    )
