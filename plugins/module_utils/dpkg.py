# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The packages dpkg has installed, read from ``dpkg-query`` (the roles skip an apt task whose packages are all
there).

``ansible.builtin.package_facts`` reads the same through python3-apt, which loads apt's whole package cache:
about 0.9 s of a processor per host against 0.01 s for dpkg's own list (benchmarks/README.md). Pure functions, no
Ansible imports.
"""

from typing import Dict, List

# What installed_packages asks dpkg-query for, one package a line.
DPKG_QUERY_FORMAT = "${db:Status-Abbrev}\\t${Package}\\t${Version}\\t${Architecture}\\n"

# The second letter of db:Status-Abbrev: installed, or installed with triggers still to run.
INSTALLED_STATES = ("i", "W", "t")


def parse_installed(output: str) -> Dict[str, List[Dict[str, str]]]:
    """dpkg-query's lines, in DPKG_QUERY_FORMAT, as package_facts gives them: each installed package's name to a
    list of its installed versions (one per architecture). Packages removed with their configuration kept, or only
    unpacked, are left out."""
    packages: Dict[str, List[Dict[str, str]]] = {}
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or len(fields[0]) < 2 or fields[0][1] not in INSTALLED_STATES:
            continue
        name, version, arch = fields[1:]
        packages.setdefault(name, []).append({"name": name, "version": version, "arch": arch, "source": "dpkg"})
    return packages
