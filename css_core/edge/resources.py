"""The ServiceResources document of `GET /service-resources`, in infernet-ml's shape."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from css_core.errors import ProviderNotAvailable
from css_core.providers.registry import Registry

__all__ = ("SERVICE_ID", "is_supported", "service_resources")

SERVICE_ID = "css-inference-service"


def _cpu_info() -> dict[str, Any]:
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return {
        "model": fields.get("model name", platform.processor()),
        "architecture": platform.machine(),
        "byte_order": "Little Endian" if sys.byteorder == "little" else "Big Endian",
        "vendor_id": fields.get("vendor_id", ""),
        "num_cores": os.cpu_count() or 0,
        "cores": [],
    }


def _disk_info() -> list[dict[str, Any]]:
    usage = shutil.disk_usage("/")
    filesystem = ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount_point, *_ = line.split()
            if mount_point == "/":
                filesystem = device
    except OSError:
        pass
    return [{"filesystem": filesystem, "mount_point": "/", "size": usage.total // 1024,
             "used": usage.used // 1024, "available": usage.free // 1024}]


def service_resources(registry: Registry) -> dict[str, Any]:
    """Read once at start-up: the hardware, and the models of the providers served; `typed_answers`
    lists those whose plugin asks for typed answers (`css_encode_answer_format`)."""
    models = [
        {"owner": p.spec.name, "name": model} for p in registry.providers if p.served for model in p.models
    ]
    typed = [{"owner": p.spec.name, "name": model}
             for p in registry.providers if p.served and p.types_answers for model in p.models]
    return {
        "version": "0.1.0",
        "service_id": SERVICE_ID,
        "hardware_capabilities": [
            {
                "capability_id": "base",
                "os_info": {"name": platform.system(), "version": platform.version()},
                "cpu_info": _cpu_info(),
                "disk_info": _disk_info(),
            }
        ],
        "compute_capability": [{"id": "ml", "type": "css", "task": [], "models": models, "cached_models": [],
                                "inference_engine": None, "inference_engine_version": None,
                                "typed_answers": typed}],
    }


def is_supported(registry: Registry, model_id: str) -> bool:
    """`OWNER/name`: its provider's plugin is loaded, its key set, the model catalogued."""
    owner, _, name = model_id.partition("/")
    try:
        provider = registry.by_name(owner)
    except ProviderNotAvailable:
        return False
    return provider.served and name in provider.models
