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


CA_DESCRIPTION = ("common_name", "key_type", "key_curve", "basic_constraints", "key_usage")


def reasons_to_make_the_ca_again(found, ca, passphrase_given=False):
    if not isinstance(found, dict):
        raise AnsibleFilterError("reasons_to_make_the_ca_again: expected what the tls role read of the CA (certificate, "
                                 "key, key_encrypted, or error), got %r" % (found,))
    missing = [name for name in CA_DESCRIPTION if not isinstance(ca, dict) or name not in ca]
    if missing:
        raise AnsibleFilterError("reasons_to_make_the_ca_again: the CA's description lacks %s (expected %s)"
                                 % (", ".join(missing), ", ".join(CA_DESCRIPTION)))
    unknown = sorted(set(ca["key_usage"]) - set(tls.CA_KEY_USAGE))
    if unknown:
        raise AnsibleFilterError("reasons_to_make_the_ca_again: key usage %s is not one of %s"
                                 % (", ".join(unknown), ", ".join(sorted(tls.CA_KEY_USAGE))))
    return tls.reasons_to_make_the_ca_again(found, ca, bool(passphrase_given))


class FilterModule:
    def filters(self):
        return {"reasons_to_sign_again": reasons_to_sign_again,
                "reasons_to_make_the_ca_again": reasons_to_make_the_ca_again}
