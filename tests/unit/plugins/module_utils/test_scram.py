"""SCRAM secrets: RFC 7677's exchange proves the keys; existing secrets are kept only while they verify."""

import base64
import hashlib
import hmac

from ansible_collections.fediscale.mastodon.plugins.module_utils import scram

# RFC 7677, section 3: user "user", password "pencil".
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
AUTH_MESSAGE = (b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
SERVER_SIGNATURE = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
CLIENT_PROOF = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="


def test_keys_reproduce_rfc_7677():
    stored_key, server_key = scram.keys("pencil", SALT, 4096)
    signature = hmac.new(server_key, AUTH_MESSAGE, hashlib.sha256).digest()
    assert base64.b64encode(signature).decode() == SERVER_SIGNATURE
    # The server checks a client proof against StoredKey: H(proof XOR signature) == StoredKey.
    client_signature = hmac.new(stored_key, AUTH_MESSAGE, hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(base64.b64decode(CLIENT_PROOF), client_signature))
    assert hashlib.sha256(client_key).digest() == stored_key


def test_secret_format_matches_postgresql():
    secret = scram.secret("pencil", SALT)
    assert secret.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    assert scram.SECRET_PATTERN.match(secret)


def test_new_secrets_get_a_random_salt():
    assert scram.secret("pencil") != scram.secret("pencil")


def test_a_verifying_secret_is_kept_and_a_stale_one_replaced():
    existing = scram.secret("pencil")
    assert scram.kept_or_new_secret("pencil", existing) == existing
    replaced = scram.kept_or_new_secret("crayon", existing)
    assert replaced != existing and scram.verifies(replaced, "crayon")
    assert not scram.verifies("md5abcdef", "pencil") and not scram.verifies(None, "pencil")
