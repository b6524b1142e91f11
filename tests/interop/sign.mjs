// Signs an ID token with `jose` and a key it generates, as an identity provider
// built on jose would, and prints {"jwks": {"keys": [jwk]}, "token": "..."}.
//
//   node sign.mjs <alg> <iss> <aud> <sub>
import { SignJWT, calculateJwkThumbprint, exportJWK, generateKeyPair } from 'jose';

const [alg, issuer, audience, subject] = process.argv.slice(2);
if (!subject) {
  console.error('usage: node sign.mjs <alg> <iss> <aud> <sub>');
  process.exit(2);
}
const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
const jwk = await exportJWK(publicKey);
jwk.kid = `jose-${alg}-${(await calculateJwkThumbprint(jwk)).slice(0, 12)}`;
jwk.alg = alg;
jwk.use = 'sig';
const token = await new SignJWT({ email: 'jose@example.com', name: 'Signed By Jose' })
  .setProtectedHeader({ alg, kid: jwk.kid, typ: 'JWT' })
  .setIssuer(issuer)
  .setAudience(audience)
  .setSubject(subject)
  .setIssuedAt()
  .setExpirationTime('10m')
  .sign(privateKey);
console.log(JSON.stringify({ jwks: { keys: [jwk] }, token }));
