"""Throughput arithmetic: peak FLOP/s of known accelerators and model FLOP utilisation (MFU).

Input: a device name as torch reports it (e.g. "NVIDIA L4") and a dtype. Output: the dense
tensor-core peak in FLOP/s (None when unknown, e.g. a CPU), and MFU = achieved / peak.
"""

from __future__ import annotations

import torch

# Dense (no sparsity) tensor-core peaks from the vendors' datasheets, FLOP/s.
PEAK_BF16 = {
    "L4": 121e12,
    "T4": 65e12,  # fp16 only: the T4 has no bf16 tensor cores
    "A10G": 70e12,
    "A100": 312e12,
    "L40S": 362e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "RTX PRO 6000": 500e12,
}
PEAK_FP32 = {"L4": 30.3e12, "T4": 8.1e12, "A10G": 31.2e12, "A100": 19.5e12, "L40S": 91.6e12,
             "H100 PCIe": 51e12, "H100": 67e12, "H200": 67e12, "RTX PRO 6000": 125e12}

# Memory bandwidth from the same datasheets, bytes/s (the roofline of memory-bound eager kernels).
BANDWIDTH = {"L4": 300e9, "T4": 320e9, "A10G": 600e9, "A100": 1555e9, "L40S": 864e9, "H100 PCIe": 2000e9,
             "H100": 3350e9, "H200": 4800e9, "RTX PRO 6000": 1792e9}


def gpu_key(device_name: str) -> str | None:
    """Map a torch device name ("NVIDIA H100 80GB HBM3", "NVIDIA L4") to a table key."""
    name = device_name.upper()
    if "H100" in name and "PCIE" in name:
        return "H100 PCIe"
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key.upper() in name:
            return key
    return None


def peak_flops(device_name: str, dtype: torch.dtype = torch.bfloat16) -> float | None:
    key = gpu_key(device_name)
    if key is None:
        return None
    table = PEAK_FP32 if dtype == torch.float32 else PEAK_BF16
    return table.get(key)


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def mfu(flops_per_second: float, device: torch.device | str, dtype: torch.dtype) -> float | None:
    peak = peak_flops(device_name(device), dtype)
    return flops_per_second / peak if peak else None
