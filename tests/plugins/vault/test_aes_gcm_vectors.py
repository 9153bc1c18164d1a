"""AES-256-GCM known-answer tests: McGrew & Viega, "The Galois/Counter Mode of Operation
(GCM)", Test Cases 13-16 (the AES-256 cases, also in NIST SP 800-38D validation data).
The vault's chunk cipher is ``cryptography``'s AESGCM; these pin it to the published values."""

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

K15 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
IV15 = "cafebabefacedbaddecaf888"
P15 = (
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
)
C15 = (
    "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
    "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
)

VECTORS = {
    # name: (key, iv, plaintext, aad, ciphertext, tag)
    "case13": ("00" * 32, "00" * 12, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    "case14": (
        "00" * 32, "00" * 12, "00" * 16, "",
        "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919",
    ),
    "case15": (K15, IV15, P15, "", C15, "b094dac5d93471bdec1a502270e3cc6c"),
    "case16": (
        K15, IV15, P15[:120], "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        C15[:120], "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", VECTORS)
def test_encrypt_matches_published_vector(case):
    key, iv, pt, aad, ct, tag = (bytes.fromhex(x) for x in VECTORS[case])
    assert AESGCM(key).encrypt(iv, pt, aad or None) == ct + tag


@pytest.mark.parametrize("case", VECTORS)
def test_decrypt_matches_published_vector(case):
    key, iv, pt, aad, ct, tag = (bytes.fromhex(x) for x in VECTORS[case])
    assert AESGCM(key).decrypt(iv, ct + tag, aad or None) == pt
