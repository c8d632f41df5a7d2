# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The options of the collection's roles (their meta/argument_specs.yml), which the plan accepts in an inventory
as other roles' variables. Kept in step with the roles by tests/unit/test_role_options.py, which also prints
the new list when they differ: plugins read no role file at run time.
"""

ROLE_OPTIONS = frozenset((
    "app_bundle",
    "app_config_dir",
    "app_db_password",
    "app_dir",
    "app_malloc_conf",
    "app_node",
    "app_redis_password",
    "app_s3_access_key_id",
    "app_s3_secret_access_key",
    "app_user",
    "nginx_listen_port",
    "nginx_public_dir",
    "nginx_server_name",
    "nginx_tls_certificate",
    "nginx_tls_certificate_key",
    "pgbouncer_mastodon_secret",
    "pgbouncer_stats_password",
    "pgbouncer_stats_user",
    "plan_app_config_dir",
    "plan_app_dir",
    "plan_find_running_units",
    "plan_postgresql_login_host",
    "plan_postgresql_login_password",
    "plan_postgresql_login_port",
    "plan_postgresql_login_user",
    "plan_report_dir",
    "postgresql_allowed_clients",
    "postgresql_listen_addresses",
    "postgresql_mastodon_password",
    "postgresql_synchronous_commit_off",
    "redis_bind_addresses",
    "redis_instances",
    "redis_password",
    "redis_sentinel",
    "redis_sentinel_port",
    "redis_server",
    "sidekiq_takeover_wait_seconds",
))
