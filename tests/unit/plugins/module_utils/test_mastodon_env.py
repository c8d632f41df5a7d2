"""Redis credentials reach Mastodon through its URLs."""

from ansible_collections.fediscale.mastodon.plugins.module_utils.mastodon import with_redis_password


def test_password_goes_into_each_url_quoted():
    env = {"REDIS_URL": "redis://10.0.0.11:6379", "CACHE_REDIS_URL": "redis://10.0.0.11:6380/0", "DB_PORT": "6432"}
    assert with_redis_password(env, "p@ss/word") == {
        "REDIS_URL": "redis://:p%40ss%2Fword@10.0.0.11:6379",
        "CACHE_REDIS_URL": "redis://:p%40ss%2Fword@10.0.0.11:6380/0", "DB_PORT": "6432"}


def test_urls_with_credentials_and_empty_passwords_are_left_alone():
    env = {"REDIS_URL": "redis://user:secret@redis.example:6379"}
    assert with_redis_password(env, "other") == env
    assert with_redis_password({"REDIS_URL": "redis://r:6379"}, "") == {"REDIS_URL": "redis://r:6379"}
