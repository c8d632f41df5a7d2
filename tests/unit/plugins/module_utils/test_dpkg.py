"""The installed packages, from dpkg-query's list (the package facts the roles' apt tasks are skipped by)."""

from ansible_collections.fediscale.mastodon.plugins.module_utils.dpkg import parse_installed

# dpkg-query --show --showformat DPKG_QUERY_FORMAT on Debian 13, with one package in each state that matters.
LISTED = (
    "ii \tnginx\t1.26.3-3+deb13u1\tamd64\n"
    "ii \tlibc6\t2.41-12\tamd64\n"
    "ii \tlibc6\t2.41-12\ti386\n"
    "hi \tpgbouncer\t1.24.1-1\tamd64\n"
    "iW \tman-db\t2.13.1-1\tamd64\n"
    "it \tsystemd\t257.9-1~deb13u1\tamd64\n"
    "rc \tredis-server\t5:8.0.2-3\tamd64\n"
    "iU \tvalkey-server\t8.1.1+dfsg1-3\tamd64\n"
    "un \tpython3-apt\t\t\n"
    "\n"
)


def test_installed_packages_are_listed_as_package_facts_lists_them():
    packages = parse_installed(LISTED)
    assert packages["nginx"] == [{"name": "nginx", "version": "1.26.3-3+deb13u1", "arch": "amd64", "source": "dpkg"}]
    assert [entry["arch"] for entry in packages["libc6"]] == ["amd64", "i386"]


def test_held_and_trigger_pending_packages_count_as_installed():
    assert {"pgbouncer", "man-db", "systemd"} <= set(parse_installed(LISTED))


def test_removed_unpacked_and_unknown_packages_are_not_installed():
    packages = parse_installed(LISTED)
    assert not {"redis-server", "valkey-server", "python3-apt"} & set(packages)
    assert sorted(packages) == ["libc6", "man-db", "nginx", "pgbouncer", "systemd"]


def test_lines_in_another_format_are_ignored():
    assert parse_installed("ii  nginx 1.26.3-3 amd64\nnot a line\n") == {}
