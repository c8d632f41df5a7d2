"""Redis credentials reach Mastodon through its URLs."""

from ansible_collections.fediscale.mastodon.plugins.module_utils import plan
from ansible_collections.fediscale.mastodon.plugins.module_utils.mastodon import redis_credentials, with_redis_password
from ansible_collections.fediscale.mastodon.plugins.module_utils.redis_users import user_password

from ...clusters import cluster


def test_password_goes_into_each_url_quoted():
    env = {"REDIS_URL": "redis://10.0.0.11:6379", "CACHE_REDIS_URL": "redis://10.0.0.11:6380/0", "DB_PORT": "6432"}
    assert with_redis_password(env, "p@ss/word") == {
        "REDIS_URL": "redis://:p%40ss%2Fword@10.0.0.11:6379",
        "CACHE_REDIS_URL": "redis://:p%40ss%2Fword@10.0.0.11:6380/0", "DB_PORT": "6432"}


def test_urls_with_credentials_and_empty_passwords_are_left_alone():
    env = {"REDIS_URL": "redis://user:secret@redis.example:6379"}
    assert with_redis_password(env, "other") == env
    assert with_redis_password({"REDIS_URL": "redis://r:6379"}, "") == {"REDIS_URL": "redis://r:6379"}


def test_sentinel_settings_get_the_masters_password_once():
    env = {"REDIS_SENTINELS": "r1:26379,r2:26379", "REDIS_SENTINEL_MASTER": "mastodon",
           "SIDEKIQ_REDIS_SENTINELS": "r1:26379,r2:26379", "SIDEKIQ_REDIS_SENTINEL_MASTER": "jobs",
           "SIDEKIQ_REDIS_PASSWORD": "own", "CACHE_REDIS_URL": "redis://r3:6380"}
    result = with_redis_password(env, "secret")
    assert result["REDIS_PASSWORD"] == "secret"
    assert result["SIDEKIQ_REDIS_PASSWORD"] == "own"
    assert result["CACHE_REDIS_URL"] == "redis://:secret@r3:6380"
    assert "CACHE_REDIS_PASSWORD" not in result
    assert "REDIS_SENTINEL_PASSWORD" not in result


def test_sentinel_settings_get_the_sentinel_users_password():
    env = {"REDIS_SENTINELS": "r1:26379", "REDIS_SENTINEL_MASTER": "mastodon", "REDIS_SENTINEL_USERNAME": "mastodon",
           "CACHE_REDIS_URL": "redis://r3:6380"}
    result = with_redis_password(env, "secret", "asker")
    assert (result["REDIS_PASSWORD"], result["REDIS_SENTINEL_PASSWORD"]) == ("secret", "asker")
    assert "CACHE_REDIS_SENTINEL_PASSWORD" not in result
    assert with_redis_password(env, "", "asker")["REDIS_SENTINEL_PASSWORD"] == "asker"


def test_a_planned_target_gets_mastodons_user_with_that_instances_own_password():
    env = {"REDIS_SENTINELS": "r1:26379", "REDIS_SENTINEL_MASTER": "mastodon", "REDIS_SENTINEL_USERNAME": "mastodon",
           "CACHE_REDIS_URL": "rediss://10.0.0.12:6380", "SIDEKIQ_REDIS_URL": "redis://other.example:6379"}
    scopes = {"REDIS": "set:mastodon", "CACHE_REDIS": "redis1/cache", "SIDEKIQ_REDIS": None}
    result = with_redis_password(env, "secret", "asker", scopes)
    expected = user_password("secret", "set:mastodon", "mastodon")
    assert (result["REDIS_USER"], result["REDIS_PASSWORD"]) == ("mastodon", expected)
    assert result["CACHE_REDIS_URL"] == "rediss://mastodon:%s@10.0.0.12:6380" % user_password(
        "secret", "redis1/cache", "mastodon")
    # A Redis the plan does not deploy: the secret itself, no user, as before.
    assert result["SIDEKIQ_REDIS_URL"] == "redis://:secret@other.example:6379"
    assert result["REDIS_SENTINEL_PASSWORD"] == "asker"


def test_credentials_of_one_configuration_as_the_units_send_them():
    """What the sidekiq role logs in with to wait for a taken-over Sidekiq: the same as the units' environment."""
    assert redis_credentials("secret", "set:mastodon") == ("mastodon", user_password("secret", "set:mastodon", "mastodon"))
    assert redis_credentials("secret", None) == ("", "secret")
    assert redis_credentials("secret", None, carries_password=False) == ("", "")
    assert redis_credentials("", "set:mastodon") == ("", "")


def test_the_plan_says_which_configurations_carry_a_password():
    report = plan.connection_budget(cluster(mastodon__redis_settings={
        "REDIS_HOST": "10.9.9.9", "CACHE_REDIS_URL": "redis://10.9.9.8:6380"}))
    configurations = report["redis"]["configurations"]
    assert {prefix: entry["carries_password"] for prefix, entry in configurations.items()} == {
        "REDIS": False, "SIDEKIQ_REDIS": False, "CACHE_REDIS": True}
