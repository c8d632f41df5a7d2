"""Reading systemd's view of the units that run Mastodon (the mastodon_units module's parsing)."""

from ansible_collections.fediscale.mastodon.plugins.module_utils import discovery

# systemctl show of the official guide's sidekiq unit and of a unit that has nothing to do with Mastodon.
SHOW = """Id=mastodon-sidekiq.service
ExecStart={ path=/home/mastodon/.rbenv/shims/bundle ; argv[]=/home/mastodon/.rbenv/shims/bundle exec sidekiq -c 25 ; \
ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }
WorkingDirectory=/home/mastodon/live
Environment=RAILS_ENV=production DB_POOL=25 MALLOC_ARENA_MAX=2 "LD_PRELOAD=libjemalloc.so"
EnvironmentFiles=/etc/mastodon/environment (ignore_errors=no)
EnvironmentFiles=/etc/mastodon/sidekiq-pull.env (ignore_errors=yes)
ActiveState=active
UnitFileState=enabled
FragmentPath=/etc/systemd/system/mastodon-sidekiq.service
ControlGroup=/system.slice/mastodon-sidekiq.service

Id=cron.service
ExecStart={ path=/usr/sbin/cron ; argv[]=/usr/sbin/cron -f $EXTRA_OPTS ; ignore_errors=no ; start_time=[n/a] ; \
stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }
WorkingDirectory=
Environment=
EnvironmentFiles=-/etc/default/cron (ignore_errors=yes)
ActiveState=active
UnitFileState=enabled
FragmentPath=/lib/systemd/system/cron.service
ControlGroup=/system.slice/cron.service
"""


def test_show_blocks_become_units():
    sidekiq, cron = discovery.parse_show(SHOW)
    assert sidekiq["id"] == "mastodon-sidekiq.service"
    assert sidekiq["arguments"] == ["/home/mastodon/.rbenv/shims/bundle", "exec", "sidekiq", "-c", "25"]
    assert sidekiq["environment"] == {"RAILS_ENV": "production", "DB_POOL": "25", "MALLOC_ARENA_MAX": "2",
                                      "LD_PRELOAD": "libjemalloc.so"}
    assert sidekiq["environment_files"] == ["/etc/mastodon/environment", "/etc/mastodon/sidekiq-pull.env"]
    assert (sidekiq["active"], sidekiq["enabled"]) == (True, True)
    assert discovery.program_of(sidekiq, "/home/mastodon/live") == "sidekiq"
    assert discovery.program_of(cron, "/home/mastodon/live") is None
    assert cron["environment_files"] == ["/etc/default/cron"]


def test_programs_by_their_command():
    def unit(*arguments, directory="/home/mastodon/live"):
        return {"working_directory": directory, "arguments": list(arguments)}
    assert discovery.program_of(unit("/home/mastodon/.rbenv/shims/bundle", "exec", "puma", "-C",
                                     "config/puma.rb"), "/home/mastodon/live") == "puma"
    assert discovery.program_of(unit("/usr/bin/node", "./streaming"), "/home/mastodon/live") == "streaming"
    assert discovery.program_of(unit("/usr/bin/node", "./streaming"), "/srv/other") is None
    # A Puma of some other application, from another directory, is not Mastodon's.
    assert discovery.program_of(unit("bundle", "exec", "puma", directory="/srv/app"), "/home/mastodon/live") is None


def test_environment_files_as_dotenv_reads_them(tmp_path):
    path = tmp_path / ".env.production"
    path.write_text("# comment\nLOCAL_DOMAIN=example.com\nDB_HOST=/var/run/postgresql\nexport DB_POOL='25'\n"
                    "REDIS_URL=\"redis://:hunter2@localhost:6379/0\"\nOTP_SECRET=abc\nbroken line\n")
    values = discovery.parse_environment_file(str(path))
    assert values["DB_POOL"] == "25" and values["REDIS_URL"] == "redis://:hunter2@localhost:6379/0"
    kept = discovery.kept_settings(values)
    # Only sizing and endpoints leave the host, and a URL's password is masked.
    assert kept == {"DB_HOST": "/var/run/postgresql", "DB_POOL": "25", "REDIS_URL": "redis://:********@localhost:6379/0"}
    assert discovery.parse_environment_file(str(tmp_path / "missing")) == {}


def test_postgresql_peers():
    assert discovery.postgresql_peer(5432, None) and discovery.postgresql_peer(6432, None)
    assert discovery.postgresql_peer(None, "/var/run/postgresql/.s.PGSQL.5432")
    assert not discovery.postgresql_peer(6379, None) and not discovery.postgresql_peer(None, "/run/redis.sock")


MOUNTINFO = """\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:40 / /home/mastodon/live/public/system rw,relatime shared:9 - nfs4 10.0.0.9:/media rw,vers=4.2
31 22 0:41 / /srv/my\\040media rw,relatime shared:10 - cifs //nas/media rw
32 22 253:2 / /home rw,relatime shared:11 - xfs /dev/vdb1 rw
"""


def test_the_file_system_under_a_path_is_its_longest_mount():
    assert discovery.filesystem_under("/home/mastodon/live/public/system/cache", MOUNTINFO) == {
        "path": "/home/mastodon/live/public/system/cache", "type": "nfs4",
        "mount": "/home/mastodon/live/public/system"}
    assert discovery.filesystem_under("/home/mastodon/live/public", MOUNTINFO)["type"] == "xfs"
    assert discovery.filesystem_under("/srv/my media/x", MOUNTINFO)["mount"] == "/srv/my media"
    # A name that only starts like a mount point is not under it.
    assert discovery.filesystem_under("/homestead", MOUNTINFO)["type"] == "ext4"
