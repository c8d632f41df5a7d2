"""PGTune's web profile, as infra.md writes its formulas, and the 2 x RAM rule on top."""

from ansible_collections.fediscale.mastodon.plugins.module_utils.pgtune import pgtune_web, postgresql_tuning

GB = 1024 * 1024


def test_16gb_ssd_defaults():
    assert postgresql_tuning(16 * GB) == {
        "max_connections": 200,
        "shared_buffers": "4GB",
        "effective_cache_size": "12GB",
        "maintenance_work_mem": "1GB",
        "checkpoint_completion_target": 0.9,
        "default_statistics_target": 100,
        "random_page_cost": 1.1,
        "effective_io_concurrency": 200,
        "min_wal_size": "1GB",
        "max_wal_size": "4GB",
        "huge_pages": "try",
        "wal_buffers": "16MB",
        "jit": "off",
        # (16GB - 4GB) / ((200 + 8) x 3) = 20164kB
        "work_mem": "20164kB",
    }


def test_cpus_set_parallel_workers_and_work_mem_divisor():
    settings = pgtune_web(32 * GB, cpus=8, connections=100, disk_type="nvme")
    assert (settings["max_worker_processes"], settings["max_parallel_workers_per_gather"],
            settings["max_parallel_workers"], settings["max_parallel_maintenance_workers"]) == (8, 4, 8, 4)
    assert settings["work_mem"] == (32 * GB - 8 * GB) // ((100 + 8) * 3)
    assert settings["effective_io_concurrency"] == 1000


def test_few_cpus_set_no_parallel_settings():
    assert "max_worker_processes" not in pgtune_web(8 * GB, cpus=2)


def test_database_size_scales_work_mem():
    base = (16 * GB - 4 * GB) // (208 * 3)
    assert pgtune_web(16 * GB, database_size="less_ram")["work_mem"] == base * 13 // 10
    assert pgtune_web(16 * GB, database_size="greater_ram")["work_mem"] == base * 9 // 10


def test_hdd_random_page_cost_depends_on_database_size():
    assert pgtune_web(16 * GB, disk_type="hdd")["random_page_cost"] == 4
    assert pgtune_web(16 * GB, disk_type="hdd", database_size="less_ram")["random_page_cost"] == 1.1


def test_small_host_wal_buffers_and_huge_pages():
    settings = pgtune_web(1 * GB)
    assert settings["wal_buffers"] == 256 * 1024 * 3 // 100  # 3 % of 256MB
    assert settings["huge_pages"] == "off"
    assert settings["work_mem"] == 4096  # the 4MB floor


def test_wal_buffers_near_16mb_round_up():
    # shared_buffers 500MB -> 3 % is 15MB: rounds up to 16MB.
    assert pgtune_web(2000 * 1024)["wal_buffers"] == 16 * 1024


def test_maintenance_work_mem_capped_at_8gb():
    assert pgtune_web(256 * GB)["maintenance_work_mem"] == 8 * GB


def test_work_mem_floor_is_clamped_by_twice_ram():
    # 1GB RAM, 1000 connections: PGTune's 4MB floor x 1000 = 4GB > 2GB.
    assert postgresql_tuning(1 * GB, connections=1000)["work_mem"] == "2097kB"
