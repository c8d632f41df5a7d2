# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where Mastodon keeps media (user uploads and cached remote media), and how nginx serves it.

Mastodon writes media from Puma (uploads) and Sidekiq (remote media, thumbnails, deletions); streaming
never touches it. With ``local`` media it is a directory on each host's own disk (PAPERCLIP_ROOT_PATH,
default the checkout's public/system) that nginx serves from its own disk too, so web, sidekiq and nginx
must share one host. With ``s3`` Mastodon writes to a bucket (config/initializers/paperclip.rb reads the S3_*
settings below) and links media at S3_ALIAS_HOST, which nginx proxies to the bucket with a cache.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional
from urllib.parse import urlsplit

# File systems whose writes cross the network. Mastodon writes media inside database transactions, so a slow
# write there holds a transaction, its row locks and a pooled connection.
NETWORK_FILESYSTEMS = frozenset((
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "cephfs", "glusterfs", "fuse.glusterfs",
    "fuse.sshfs", "fuse.s3fs", "fuse.rclone", "fuse.juicefs", "fuse.cephfs", "lustre", "beegfs", "gpfs",
    "ocfs2", "gfs2", "davfs", "fuse.davfs", "moosefs", "fuse.mfs",
))

# The S3 settings the plan models, by the inventory key of section mastodon (mastodon_s3_bucket, ...).
S3_SETTINGS = {
    "s3_bucket": "S3_BUCKET",
    "s3_region": "S3_REGION",
    "s3_endpoint": "S3_ENDPOINT",
    "s3_hostname": "S3_HOSTNAME",
    "s3_protocol": "S3_PROTOCOL",
    "s3_alias_host": "S3_ALIAS_HOST",
    "s3_override_path_style": "S3_OVERRIDE_PATH_STYLE",
    "s3_permission": "S3_PERMISSION",
}
# Settings the plan writes and so refuses in mastodon_environment, where they would win over it.
MEDIA_VARIABLES = ("S3_ENABLED", "PAPERCLIP_ROOT_PATH") + tuple(S3_SETTINGS.values())
# Paperclip's defaults (config/initializers/paperclip.rb).
S3_DEFAULT_REGION = "us-east-1"

# nginx keeps about 8000 cache keys in a megabyte of its keys zone (ngx_http_proxy_module, proxy_cache_path);
# media objects average well above 64 kB (thumbnails are small, originals and videos large), so a zone sized for
# one key per 64 kB of max_size never fills before the disk does.
CACHE_KEYS_PER_MB = 8000
CACHE_AVERAGE_OBJECT_KB = 64


def media_hosts(hosts: Dict[str, Dict[str, Any]]) -> List[str]:
    """Hosts whose Mastodon processes read and write media: Puma and Sidekiq, not streaming."""
    result = []
    for host, sections in sorted(hosts.items()):
        web = sections.get("web") is not None
        sidekiq = any(queue["instances"] > 0 for queue in (sections.get("sidekiq") or {}).get("queues", []))
        if web or sidekiq:
            result.append(host)
    return result


def keys_zone_mb(max_size_kb: int) -> int:
    return max(1, math.ceil(max_size_kb / CACHE_AVERAGE_OBJECT_KB / CACHE_KEYS_PER_MB))


def bucket_origin(cluster: Dict[str, Any]) -> Dict[str, str]:
    """Where the bucket's objects are read over HTTP, as nginx proxies to it: scheme, host (with port) and the
    path before an object's key. Path style (ENDPOINT/BUCKET/KEY) is what Paperclip uses with S3_ENDPOINT unless
    S3_OVERRIDE_PATH_STYLE is true; virtual-host style (BUCKET.HOST/KEY) otherwise."""
    bucket = cluster["s3_bucket"] or ""
    if cluster["s3_endpoint"]:
        parts = urlsplit(cluster["s3_endpoint"])
        if cluster["s3_override_path_style"]:
            return {"scheme": parts.scheme, "host": "%s.%s" % (bucket, parts.netloc), "path": ""}
        return {"scheme": parts.scheme, "host": parts.netloc, "path": "/" + bucket}
    hostname = cluster["s3_hostname"] or "s3-%s.amazonaws.com" % (cluster["s3_region"] or S3_DEFAULT_REGION)
    return {"scheme": cluster["s3_protocol"], "host": "%s.%s" % (bucket, hostname), "path": ""}


def alias_server_name(alias_host: Optional[str]) -> Optional[str]:
    """The host nginx answers media at: S3_ALIAS_HOST without any path after it."""
    return alias_host.split("/", 1)[0].split(":", 1)[0] if alias_host else None


def environment(cluster: Dict[str, Any]) -> Dict[str, str]:
    """What every Mastodon unit reads about media. Written always, so that .env.production cannot switch it."""
    if cluster["media"] == "local":
        env = {"S3_ENABLED": "false"}
        if cluster["media_path"]:
            env["PAPERCLIP_ROOT_PATH"] = cluster["media_path"]
        return env
    env = {"S3_ENABLED": "true"}
    for key, name in S3_SETTINGS.items():
        value = cluster[key]
        if key == "s3_override_path_style":
            # Paperclip compares it with "true"; false is its default, left out.
            value = "true" if value else None
        if value is not None:
            env[name] = str(value)
    return env


def nginx_media(cluster: Dict[str, Any], section: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """What one nginx serves of the media: the local directory, or a caching proxy to the bucket at the alias host.
    None when media is in a bucket linked at the provider's own address (nothing for nginx to do)."""
    if cluster["media"] == "local":
        return {"mode": "local", "path": cluster["media_path"]}
    if not cluster["s3_alias_host"]:
        return None
    return {
        "mode": "s3",
        "server_name": alias_server_name(cluster["s3_alias_host"]),
        "origin": bucket_origin(cluster),
        "cache_path": section["media_cache_path"],
        "cache_max_size": "%dm" % max(1, section["media_cache_max_size"] // 1024),
        "cache_keys_zone": "%dm" % keys_zone_mb(section["media_cache_max_size"]),
        "cache_inactive": "%dh" % section["media_cache_inactive_hours"],
        "resolver": section["media_resolver"],
    }


def report(cluster: Dict[str, Any], hosts: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The media part of the budget report: the mode, the hosts that write media and their file systems."""
    writers = media_hosts(hosts)
    return {
        "mode": cluster["media"],
        "path": cluster["media_path"],
        "hosts": writers,
        "proxies": sorted(host for host, sections in hosts.items() if sections.get("nginx") is not None),
        "filesystems": {host: {"declared": hosts[host]["mastodon"]["media_path_fs"],
                               "found": hosts[host]["mastodon"]["media_filesystem"]} for host in writers},
        "s3": {key: cluster[key] for key in S3_SETTINGS},
    }


def is_network_filesystem(fstype: Optional[str]) -> bool:
    return bool(fstype) and (fstype.lower() in NETWORK_FILESYSTEMS or re.match(r"nfs", fstype.lower()) is not None)
