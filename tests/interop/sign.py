"""Signs an ID token with PyJWT and a key it generates (cryptography), as an
identity provider built on PyJWT would, and prints {"jwks": {...}, "token": "..."}.

    python3 sign.py <alg> <iss> <aud> <sub>
"""

import json
import sys
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def main() -> int:
    if len(sys.argv) != 5:
        print("usage: python3 sign.py <alg> <iss> <aud> <sub>", file=sys.stderr)
        return 2
    alg, issuer, audience, subject = sys.argv[1:]
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        print(f"unsupported alg {alg}", file=sys.stderr)
        return 2
    jwk["kid"] = f"pyjwt-{alg}"
    jwk["alg"] = alg
    jwk["use"] = "sig"
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "exp": now + 600,
        "email": "pyjwt@example.com",
        "name": "Signed By PyJWT",
    }
    token = jwt.encode(claims, private, algorithm=alg, headers={"kid": jwk["kid"], "typ": "JWT"})
    print(json.dumps({"jwks": {"keys": [jwk]}, "token": token}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
