"""Resident memory of this process, the one reader every stage uses (training summary, HELM efficiency).

psutil reads the current RSS portably; the peak comes from `getrusage`, whose unit differs by platform (Linux
reports KiB, macOS bytes).
"""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def rss_bytes() -> int:
    """Current resident memory of this process, in bytes (the peak so far where psutil is missing)."""
    try:
        import psutil
    except ImportError:  # psutil is a declared dependency; getrusage is the POSIX fallback
        return peak_rss_bytes()
    return int(psutil.Process().memory_info().rss)


def available_bytes(device: object | None = None) -> int:
    """Memory a new allocation can take on `device` (a torch.device; None or CPU: the machine), in bytes.

    CUDA: free memory as the driver reports it (`torch.cuda.mem_get_info`); CPU: psutil's `available` (free plus
    reclaimable cache), or unlimited where psutil is missing.
    """
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil
    except ImportError:
        return 2**62
    return int(psutil.virtual_memory().available)
