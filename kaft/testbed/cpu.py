"""What a build's numbers depend on besides its config: the CPU and the kernels torch dispatches to.

Builds on different kernel families differ in rounding, and so in their weights; ``testbed.json`` records
:func:`build_env` so a number can always be traced to the machine that made it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_cpu() -> str:
    """One line for measured numbers: which CPU, whether it has AVX-512 BF16, which kernels torch dispatches to."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    bf16 = "AVX-512 BF16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no AVX-512 BF16"
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {bf16}, torch {torch.__version__} "
        f"{torch.backends.cpu.get_cpu_capability()} kernels"
    )


def build_env() -> dict:
    """What the numbers of a build depend on besides its config: torch, the kernel family PyTorch dispatched to
    (``ATEN_CPU_CAPABILITY`` forces it), the BLAS / oneDNN pins and the thread count (recorded in testbed.json)."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    return {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        **{k.lower(): os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")},
    }
