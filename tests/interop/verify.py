"""Verifies a claimsmith internal token the way a Python backend using PyJWT does:
PyJWKClient on the admin JWKS, then jwt.decode with the algorithm, issuer, audience.

    python3 verify.py <jwks_url> <token> <iss> <aud>

Prints {"library", "alg", "kid", "claims"} as JSON and exits 0 when the token
verifies; prints the error on stderr and exits 1 otherwise.
"""

import json
import sys

import jwt


def main() -> int:
    if len(sys.argv) != 5:
        print("usage: python3 verify.py <jwks_url> <token> <iss> <aud>", file=sys.stderr)
        return 2
    jwks_url, token, issuer, audience = sys.argv[1:]
    try:
        header = jwt.get_unverified_header(token)
        if header.get("typ") != "at+jwt":
            print(f"unexpected typ {header.get('typ')!r}", file=sys.stderr)
            return 1
        client = jwt.PyJWKClient(jwks_url, cache_keys=False, cache_jwk_set=False)
        key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key,
            algorithms=["EdDSA", "ES256", "RS256"],
            issuer=issuer,
            audience=audience,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        )
    except Exception as e:  # noqa: BLE001 - the test reads the message
        print(f"PyJWT refused the token: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"library": "pyjwt", "alg": header["alg"], "kid": header.get("kid"), "claims": claims}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
