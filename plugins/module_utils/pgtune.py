# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PGTune's "web" profile (le0pard/pgtune, Linux), so results compare with pgtune.leopard.in.ua.

All sizes in kB; every division is floored, as PGTune does. On top sits the
compendium's rule: max_connections x work_mem must stay within twice the RAM.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ansible_collections.fediscale.mastodon.plugins.module_utils.schema import format_size_kb

MB = 1024
GB = 1024 * 1024
PGTUNE_DEFAULT_CONNECTIONS = 200
WORK_MEM_FLOOR_KB = 4 * MB
EFFECTIVE_IO_CONCURRENCY = {"hdd": 2, "ssd": 200, "san": 300, "nvme": 1000}


def work_mem_limit_kb(ram_kb: int, max_connections: int) -> int:
    """The largest work_mem with max_connections x work_mem <= 2 x RAM."""
    return (2 * ram_kb) // max_connections


def pgtune_web(ram_kb: int, cpus: Optional[int] = None, connections: Optional[int] = None,
               disk_type: str = "ssd", database_size: str = "mid_ram", version: int = 15) -> Dict[str, Any]:
    """PostgreSQL settings for a web workload; sizes as PostgreSQL writes them."""
    max_connections = connections if connections else PGTUNE_DEFAULT_CONNECTIONS
    shared_buffers = ram_kb // 4
    settings: Dict[str, Any] = {
        "max_connections": max_connections,
        "shared_buffers": shared_buffers,
        "effective_cache_size": ram_kb * 3 // 4,
        "maintenance_work_mem": min(ram_kb // 16, 8 * GB),
        "checkpoint_completion_target": 0.9,
        "default_statistics_target": 100,
        "random_page_cost": 1.1 if database_size == "less_ram" or disk_type != "hdd" else 4,
        "effective_io_concurrency": EFFECTIVE_IO_CONCURRENCY[disk_type],
        "min_wal_size": 1 * GB,
        "max_wal_size": 4 * GB,
        "huge_pages": "try" if shared_buffers >= 2 * GB else "off",
    }
    wal_buffers = shared_buffers * 3 // 100
    if wal_buffers > 16 * MB:
        wal_buffers = 16 * MB
    elif 14 * MB < wal_buffers < 16 * MB:
        wal_buffers = 16 * MB
    settings["wal_buffers"] = max(wal_buffers, 32)
    if version >= 12:
        settings["jit"] = "off"
    workers = 8
    if cpus is not None and cpus >= 4:
        workers = cpus
        half = min(-(-cpus // 2), 4)
        settings.update({
            "max_worker_processes": cpus,
            "max_parallel_workers_per_gather": half,
            "max_parallel_workers": cpus,
            "max_parallel_maintenance_workers": half,
        })
    work_mem = (ram_kb - shared_buffers) // ((max_connections + workers) * 3)
    if database_size == "less_ram":
        work_mem = work_mem * 13 // 10
    elif database_size == "greater_ram":
        work_mem = work_mem * 9 // 10
    settings["work_mem"] = max(work_mem, WORK_MEM_FLOOR_KB)
    return settings


def tuning_kb(ram_kb: int, cpus: Optional[int] = None, connections: Optional[int] = None,
              disk_type: str = "ssd", database_size: str = "mid_ram", version: int = 15) -> Dict[str, Any]:
    """PGTune's web settings (sizes in kB), with work_mem lowered to obey the 2 x RAM rule."""
    settings = pgtune_web(ram_kb, cpus, connections, disk_type, database_size, version)
    settings["work_mem"] = min(settings["work_mem"], work_mem_limit_kb(ram_kb, settings["max_connections"]))
    return settings


def formatted(settings: Dict[str, Any]) -> Dict[str, Any]:
    """Sizes written as postgresql.conf takes them (4GB, 20971kB)."""
    return {key: format_size_kb(value) if key in SIZE_SETTINGS else value for key, value in settings.items()}


def postgresql_tuning(ram_kb: int, cpus: Optional[int] = None, connections: Optional[int] = None,
                      disk_type: str = "ssd", database_size: str = "mid_ram", version: int = 15) -> Dict[str, Any]:
    """PGTune's web settings as postgresql.conf takes them, work_mem within the 2 x RAM rule."""
    return formatted(tuning_kb(ram_kb, cpus, connections, disk_type, database_size, version))


SIZE_SETTINGS = ("shared_buffers", "effective_cache_size", "maintenance_work_mem", "wal_buffers",
                 "min_wal_size", "max_wal_size", "work_mem")
