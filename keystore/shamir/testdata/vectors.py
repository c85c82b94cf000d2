#!/usr/bin/env python3
"""Generate vectors.json: known-answer vectors for package shamir.

This is an independent implementation (log/exp tables over the AES field,
Python's base32 and hashlib) so that the Go code is checked against
something other than itself. Run from this directory:

    python3 vectors.py > vectors.json
"""
import base64
import hashlib
import json

# GF(2^8) with x^8+x^4+x^3+x+1; 0x03 generates the multiplicative group.
EXP = [0] * 510
LOG = [0] * 256
v = 1
for i in range(255):
    EXP[i] = EXP[i + 255] = v
    LOG[v] = i
    # v *= 3  (v*2 xor v, reduced)
    v2 = (v << 1) ^ (0x11B if v & 0x80 else 0)
    v = v2 ^ v


def mul(a, b):
    if a == 0 or b == 0:
        return 0
    return EXP[LOG[a] + LOG[b]]


def inv(a):
    return 0 if a == 0 else EXP[255 - LOG[a]]


def stream(seed, n):
    """Deterministic coefficient bytes: SHA-256(seed || counter) blocks."""
    out = b""
    ctr = 0
    while len(out) < n:
        out += hashlib.sha256(seed.encode() + ctr.to_bytes(4, "big")).digest()
        ctr += 1
    return out[:n]


def split(secret, n, t, coeffs):
    deg = t - 1
    shares = []
    for x in range(1, n + 1):
        ys = []
        for j, s in enumerate(secret):
            c = coeffs[j * deg:(j + 1) * deg]
            y = s
            xp = 1
            for k in range(deg):  # coefficient of x^(k+1) is c[k]
                xp = mul(xp, x)
                y ^= mul(c[k], xp)
            ys.append(y)
        shares.append(bytes([x] + ys))
    return shares


def encode(raw):
    cs = hashlib.sha256(b"coffer-share-v1" + raw).digest()[:4]
    return "coffer-share-1-" + base64.b32encode(raw + cs).decode().rstrip("=").lower()


def b32(raw_with_checksum):
    return base64.b32encode(raw_with_checksum).decode().rstrip("=").lower()


def split_vector(comment, secret, n, t, seed):
    coeffs = stream(seed, len(secret) * (t - 1)) if t > 1 else b""
    shares = split(secret, n, t, coeffs)
    return {
        "comment": comment,
        "secret": secret.hex(),
        "n": n,
        "t": t,
        "rand_seed": seed,
        "rand": coeffs.hex(),
        "shares": [s.hex() for s in shares],
        "encoded": [encode(s) for s in shares],
    }


vectors = {}

vectors["gf_mul"] = [
    # FIPS-197 section 4.2 examples (hand-checked).
    {"a": 0x57, "b": 0x83, "product": mul(0x57, 0x83), "comment": "FIPS-197 4.2: {57}·{83} = {c1}"},
    {"a": 0x57, "b": 0x13, "product": mul(0x57, 0x13), "comment": "FIPS-197 4.2.1: {57}·{13} = {fe}"},
    {"a": 0x53, "b": 0xCA, "product": mul(0x53, 0xCA), "comment": "FIPS-197 4.2: {53} and {ca} are inverses"},
    {"a": 0x02, "b": 0x80, "product": mul(0x02, 0x80), "comment": "x·x^7 = x^8 = x^4+x^3+x+1"},
    {"a": 0x00, "b": 0xA5, "product": 0, "comment": "zero"},
    {"a": 0x01, "b": 0xA5, "product": 0xA5, "comment": "one"},
    {"a": 0xFF, "b": 0xFF, "product": mul(0xFF, 0xFF), "comment": ""},
    {"a": 0x03, "b": 0xF6, "product": mul(0x03, 0xF6), "comment": ""},
]
assert vectors["gf_mul"][0]["product"] == 0xC1
assert vectors["gf_mul"][1]["product"] == 0xFE
assert vectors["gf_mul"][2]["product"] == 0x01
assert vectors["gf_mul"][3]["product"] == 0x1B
vectors["gf_inv"] = [
    {"a": a, "inverse": inv(a)} for a in (0x00, 0x01, 0x02, 0x03, 0x53, 0xCA, 0x80, 0xFF)
]
assert inv(0x53) == 0xCA
# Bytes as two hex digits, as FIPS-197 writes them.
for m in vectors["gf_mul"]:
    for k in ("a", "b", "product"):
        m[k] = "%02x" % m[k]
for m in vectors["gf_inv"]:
    for k in ("a", "inverse"):
        m[k] = "%02x" % m[k]

root = bytes(range(32))
vectors["split"] = [
    split_vector("dev mode: one share, threshold 1; y is the secret", root, 1, 1, ""),
    split_vector("2 of 3, 32-byte root key", root, 3, 2, "coffer 2-of-3"),
    split_vector("3 of 5, 32-byte root key", hashlib.sha256(b"root key").digest(), 5, 3, "coffer 3-of-5"),
    split_vector("2 of 2, one-byte secret", b"\x00", 2, 2, "coffer 2-of-2"),
    split_vector("4 of 6, 64-byte secret (the maximum)", hashlib.sha512(b"long").digest(), 6, 4, "coffer 4-of-6"),
    split_vector("3 of 255, every x coordinate", b"\xca\xfe", 255, 3, "coffer 3-of-255"),
]
# Coefficient stream all zero: every share's y equals the secret.
zero = {
    "comment": "2 of 3 with zero coefficients: every y is the secret",
    "secret": "a5", "n": 3, "t": 2, "rand_seed": "", "rand": "00",
}
zero["shares"] = [s.hex() for s in split(b"\xa5", 3, 2, b"\x00")]
zero["encoded"] = [encode(bytes.fromhex(s)) for s in zero["shares"]]
vectors["split"].append(zero)

good = bytes.fromhex(vectors["split"][1]["shares"][0])
good_enc = encode(good)
good_b32 = good_enc[len("coffer-share-1-"):]

# Accepted variants of a share: input, and the raw share it gives.
vectors["parse_ok"] = [
    {"comment": "canonical", "input": good_enc, "raw": good.hex()},
    {"comment": "surrounding whitespace", "input": "  \t" + good_enc + "\r\n", "raw": good.hex()},
    {"comment": "upper case", "input": good_enc.upper(), "raw": good.hex()},
    {"comment": "grouped with dashes", "input": "coffer-share-1-" + "-".join(good_b32[i:i + 4] for i in range(0, len(good_b32), 4)), "raw": good.hex()},
    {"comment": "grouped with spaces, mixed case", "input": "Coffer-Share-1-" + " ".join(good_b32[i:i + 5].upper() for i in range(0, len(good_b32), 5)), "raw": good.hex()},
    {"comment": "dash right after the prefix", "input": "coffer-share-1--" + good_b32, "raw": good.hex()},
]


def with_checksum(raw):
    return raw + hashlib.sha256(b"coffer-share-v1" + raw).digest()[:4]


# Non-canonical trailing bits: 33+4 = 37 bytes = 296 bits in 60 base32
# characters (300 bits), so the last character carries 4 unused bits.
assert len(good_b32) == 60
last = good_b32[-1]
alphabet = "abcdefghijklmnopqrstuvwxyz234567"
noncanon = good_b32[:-1] + alphabet[alphabet.index(last) | 1]
assert noncanon != good_b32
assert base64.b32decode((noncanon.upper() + "====")) == base64.b32decode((good_b32.upper() + "===="))

flipped = good_b32[:10] + ("a" if good_b32[10] != "a" else "b") + good_b32[11:]

vectors["parse_error"] = [
    {"comment": "empty", "input": "", "error": "empty"},
    {"comment": "only whitespace", "input": " \n\t ", "error": "empty"},
    {"comment": "no prefix", "input": good_b32, "error": "not a Coffer share"},
    {"comment": "other format version", "input": "coffer-share-2-" + good_b32, "error": "format version"},
    {"comment": "prefix cut short", "input": "coffer-share", "error": "not a Coffer share"},
    {"comment": "age-armored share", "input": "-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n-----END AGE ENCRYPTED FILE-----", "error": "age-encrypted"},
    {"comment": "digit 0 (letter O mistyped)", "input": "coffer-share-1-" + good_b32[:5] + "0" + good_b32[6:], "error": "character 21"},
    {"comment": "digit 1", "input": "coffer-share-1-1" + good_b32[1:], "error": "character 16"},
    {"comment": "padding", "input": good_enc + "====", "error": "character"},
    {"comment": "line break inside", "input": good_enc[:30] + "\n" + good_enc[30:], "error": "character"},
    {"comment": "tab inside", "input": good_enc[:30] + "\t" + good_enc[30:], "error": "character"},
    {"comment": "underscore separator", "input": good_enc[:30] + "_" + good_enc[30:], "error": "character"},
    {"comment": "last character dropped (impossible base32 length)", "input": good_enc[:-1], "error": "wrong length"},
    {"comment": "last eight characters dropped (checksum no longer matches)", "input": good_enc[:-8], "error": "checksum mismatch"},
    {"comment": "one character changed", "input": "coffer-share-1-" + flipped, "error": "checksum mismatch"},
    {"comment": "two shares run together", "input": good_enc + encode(bytes.fromhex(vectors["split"][1]["shares"][1]))[len("coffer-share-1-"):], "error": "checksum mismatch"},
    {"comment": "non-canonical trailing bits", "input": "coffer-share-1-" + noncanon, "error": "checksum mismatch"},
    {"comment": "no y byte", "input": "coffer-share-1-" + b32(with_checksum(b"\x01")), "error": "too short"},
    {"comment": "x = 0 with a valid checksum", "input": "coffer-share-1-" + b32(with_checksum(b"\x00" + bytes(32))), "error": "index 0"},
    {"comment": "65-byte y with a valid checksum", "input": "coffer-share-1-" + b32(with_checksum(b"\x01" + bytes(65))), "error": "more than the 64"},
    {"comment": "far too long", "input": "coffer-share-1-" + "a" * 2000, "error": "far longer than a share"},
]

s1 = vectors["split"][1]["shares"]
vectors["combine_error"] = [
    {"comment": "no shares", "shares": [], "error": "no shares"},
    {"comment": "share without y", "shares": ["01"], "error": "too short"},
    {"comment": "same share twice", "shares": [s1[0], s1[1], s1[0]], "error": "shares 1 and 3 are the same share (number 1)"},
    {"comment": "lengths differ", "shares": [s1[0], s1[1][:-2]], "error": "share 2 is 32 bytes long but share 1 is 33"},
    {"comment": "x = 0", "shares": [s1[0], "00" + s1[1][2:]], "error": "share 2 has index 0"},
    {"comment": "y too long", "shares": ["01" + "00" * 65], "error": "more than the 64"},
]

print(json.dumps(vectors, indent=2, ensure_ascii=False))
