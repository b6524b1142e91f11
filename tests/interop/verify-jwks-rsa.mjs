// Verifies a claimsmith internal token the way an Express backend with Auth0's
// `jwks-rsa` and `jsonwebtoken` does: getSigningKey(kid) from the admin JWKS, then
// jwt.verify with the algorithm, issuer and audience. jsonwebtoken has no `typ`
// option, so the RFC 9068 header type is checked by hand.
//
//   node verify-jwks-rsa.mjs <jwks_url> <token> <iss> <aud>
//
// Exit 0 and JSON on stdout when it verifies; exit 3 with `UNSUPPORTED-BY-LIBRARY:`
// on stderr when a library cannot handle the algorithm at all; exit 1 otherwise.
import jwksRsa from 'jwks-rsa';
import jwt from 'jsonwebtoken';

const [jwksUri, token, issuer, audience] = process.argv.slice(2);
if (!audience) {
  console.error('usage: node verify-jwks-rsa.mjs <jwks_url> <token> <iss> <aud>');
  process.exit(2);
}
const decoded = jwt.decode(token, { complete: true });
if (!decoded) {
  console.error('jsonwebtoken cannot decode the token');
  process.exit(1);
}
const { alg, kid, typ } = decoded.header;
if (typ !== 'at+jwt') {
  console.error(`unexpected typ ${typ}`);
  process.exit(1);
}
const client = jwksRsa({ jwksUri, cache: false, rateLimit: false });
let key;
try {
  key = await client.getSigningKey(kid);
} catch (e) {
  console.error(`UNSUPPORTED-BY-LIBRARY: jwks-rsa ${e.name}: ${e.message}`);
  process.exit(e.name === 'SigningKeyNotFoundError' || e.name === 'JwksError' ? 3 : 1);
}
try {
  const claims = jwt.verify(token, key.getPublicKey(), { algorithms: [alg], issuer, audience });
  console.log(JSON.stringify({ library: 'jwks-rsa+jsonwebtoken', alg, kid, claims }));
} catch (e) {
  // jsonwebtoken 9 knows HS*, RS*, PS*, ES* and none, and only rsa, rsa-pss and ec
  // keys (lib/validateAsymmetricKey.js): an Ed25519 key, which jwks-rsa 4 does return
  // for an OKP JWK, is refused as `Unknown key type "ed25519"` before any signature
  // check. That is the library's limit, not the token's.
  if (/Unknown key type|invalid algorithm|not supported/i.test(e.message)) {
    console.error(`UNSUPPORTED-BY-LIBRARY: jsonwebtoken ${e.name}: ${e.message}`);
    process.exit(3);
  }
  console.error(`jsonwebtoken refused the token: ${e.name}: ${e.message}`);
  process.exit(1);
}
