# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for the certificates the tls role issues."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.fediscale.mastodon.plugins.module_utils import tls


def reasons_to_sign_again(current, host, certificate, key_sha256="", ca_key_identifier=""):
    if not isinstance(current, dict):
        raise AnsibleFilterError("reasons_to_sign_again: expected x509_certificate_info's result, got %r" % (current,))
    if not isinstance(certificate, dict) or "subject_alt_names" not in certificate \
            or "extended_key_usage" not in certificate:
        raise AnsibleFilterError("reasons_to_sign_again: expected the plan's entry of tls.certificates for %s, got %r"
                                 % (host, certificate))
    return tls.reasons_to_sign_again(current, str(host), certificate, str(key_sha256 or ""),
                                     str(ca_key_identifier or ""))


class FilterModule:
    def filters(self):
        return {"reasons_to_sign_again": reasons_to_sign_again}
