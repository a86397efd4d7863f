"""MFU's denominator: published peaks for known accelerators by device kind and dtype, a measured
figure only for CPUs and unknown devices, and which one was used."""

import types

import jax
import pytest

from gptjax.runtime import hardware


@pytest.mark.parametrize("kind, dtype, name, peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", "NVIDIA H100 SXM", 989e12),
    ("NVIDIA H100 PCIe", "bfloat16", "NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", "bfloat16", "NVIDIA H200", 989e12),
    ("NVIDIA H200", "float32", "NVIDIA H200", 67e12),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", "NVIDIA A100", 312e12),
    ("NVIDIA L40S", "bfloat16", "NVIDIA L40S", 362e12),
    ("NVIDIA L4", "bfloat16", "NVIDIA L4", 121e12),
    ("TPU v4", "bfloat16", "TPU v4", 275e12),
    ("TPU v5 lite", "bfloat16", "TPU v5e", 197e12),
    ("TPU v5p", "bfloat16", "TPU v5p", 459e12),
    ("TPU v6 lite", "bfloat16", "TPU v6e", 918e12),
])
def test_published_peaks_by_device_kind(kind, dtype, name, peak):
    assert hardware.published(kind, dtype) == (name, peak)


def test_unknown_devices_and_cpus_are_measured(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTJAX_CACHE_DIR", str(tmp_path))
    assert hardware.published("Some New Chip", "bfloat16") is None
    cpu = hardware.peak_flops(None)
    assert cpu.source.startswith("measured:") and cpu.per_device > 1e9
    assert hardware.peak_flops(3e12) == hardware.PeakFlops(3e12, "configured")
    gpu = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H200")
    monkeypatch.setattr(jax, "local_devices", lambda: [gpu])
    assert hardware.peak_flops(None, "bfloat16") == hardware.PeakFlops(989e12, "published: NVIDIA H200 bfloat16 dense")
