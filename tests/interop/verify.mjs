// Verifies a claimsmith internal token the way a Node backend using `jose` does:
// createRemoteJWKSet on the admin JWKS, then jwtVerify with typ, issuer, audience.
//
//   node verify.mjs <jwks_url> <token> <iss> <aud>
//
// Prints {"library", "alg", "kid", "claims"} as JSON and exits 0 when the token
// verifies; prints the library's error on stderr and exits 1 otherwise.
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';

const [jwksUrl, token, issuer, audience] = process.argv.slice(2);
if (!audience) {
  console.error('usage: node verify.mjs <jwks_url> <token> <iss> <aud>');
  process.exit(2);
}
try {
  const jwks = createRemoteJWKSet(new URL(jwksUrl));
  const { payload, protectedHeader } = await jwtVerify(token, jwks, {
    typ: 'at+jwt',
    issuer,
    audience,
    algorithms: ['EdDSA', 'ES256', 'RS256'],
    requiredClaims: ['exp', 'iat', 'sub', 'jti', 'client_id'],
  });
  const header = decodeProtectedHeader(token);
  console.log(JSON.stringify({ library: 'jose', alg: protectedHeader.alg, kid: header.kid, claims: payload }));
} catch (e) {
  console.error(`jose refused the token: ${e.code ?? e.name}: ${e.message}`);
  process.exit(1);
}
