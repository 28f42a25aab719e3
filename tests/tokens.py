"""Bearer tokens for tests: an ES256 key whose public half is in a JWKS file the servers are configured with
(auth_jwks_file), and tokens it signs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

AUDIENCE = "omni"
ISSUER = "https://login.example.test"


@dataclass
class Issuer:
    """Signs bearer tokens with a key whose public half is in jwks_file."""

    key: ec.EllipticCurvePrivateKey
    jwks_file: Path

    @classmethod
    def create(cls, directory: Path) -> Issuer:
        """A new key, its JWKS written to directory/jwks.json."""
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": "k1", "alg": "ES256", "use": "sig"})
        jwks_file = directory / "jwks.json"
        jwks_file.write_text(json.dumps({"keys": [jwk]}))
        return cls(key, jwks_file)

    def token(self, scopes: list[str], *, subject: str = "agent-7", **claims: Any) -> str:
        """A token for subject with scopes, valid for five minutes (claims override)."""
        now = int(time.time())
        payload = {"sub": subject, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 300}
        payload.update({"scope": " ".join(scopes), **claims})
        return jwt.encode(payload, self.key, algorithm="ES256", headers={"kid": "k1"})

    def bearer(self, scopes: list[str], **claims: Any) -> tuple[tuple[str, str]]:
        """Call metadata carrying such a token."""
        return (("authorization", f"Bearer {self.token(scopes, **claims)}"),)
