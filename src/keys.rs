//! claimsmith's own signing keys: parsed from PKCS#8 PEM (or generated) once, with
//! the public JWK and RFC 7638 `kid` the admin JWKS publishes.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The crypto library refused to sign (it should never happen with a loaded key).
#[derive(Debug, thiserror::Error)]
#[error("signing failed")]
pub struct SignError;

/// Why a key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no PEM private key found (expected a \"PRIVATE KEY\" PKCS#8 block)")]
    NoPem,
    #[error("the PEM block is not an Ed25519, P-256 or RSA private key")]
    Unsupported,
    #[error("RSA keys must be at least 2048 bits")]
    RsaTooSmall,
    #[error("key generation failed")]
    Generate,
}

enum KeyPairKind {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

/// A private signing key, parsed once, with its public JWK and RFC 7638 `kid`.
pub struct SigningKey {
    pair: KeyPairKind,
    kid: String,
    jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("alg", &self.algorithm()).field("kid", &self.kid).finish()
    }
}

impl SigningKey {
    /// Parses a PEM private key: PKCS#8 (Ed25519, P-256 or RSA), PKCS#1 RSA, or SEC1 P-256.
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, KeyError> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        // The first private key in the text (certificates and other sections around
        // it are skipped).
        let item = PrivateKeyDer::from_pem_slice(pem).map_err(|_| KeyError::NoPem)?;
        let pair = match item {
            PrivateKeyDer::Pkcs8(der) => {
                let der = der.secret_pkcs8_der();
                if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                    KeyPairKind::Ed25519(k)
                } else if let Ok(k) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der) {
                    KeyPairKind::Es256(k)
                } else if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
                    KeyPairKind::Rs256(k)
                } else {
                    return Err(KeyError::Unsupported);
                }
            }
            PrivateKeyDer::Pkcs1(der) => {
                KeyPairKind::Rs256(RsaKeyPair::from_der(der.secret_pkcs1_der()).map_err(|_| KeyError::Unsupported)?)
            }
            PrivateKeyDer::Sec1(der) => KeyPairKind::Es256(
                EcdsaKeyPair::from_private_key_der(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_sec1_der())
                    .map_err(|_| KeyError::Unsupported)?,
            ),
            _ => return Err(KeyError::NoPem),
        };
        if let KeyPairKind::Rs256(k) = &pair
            && k.public_modulus_len() < 256
        {
            return Err(KeyError::RsaTooSmall);
        }
        Ok(Self::from_pair(pair))
    }

    /// Makes a new key; its PKCS#8 PEM is returned beside it (for `keygen`).
    pub fn generate(alg: Algorithm) -> Result<(SigningKey, String), KeyError> {
        let der: Vec<u8> = match alg {
            Algorithm::EdDSA => {
                // PKCS#8 v1: the form jsonwebtoken, openssl and node read.
                Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new())
                    .map_err(|_| KeyError::Generate)?
                    .as_ref()
                    .to_vec()
            }
            Algorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                    .map_err(|_| KeyError::Generate)?
                    .as_ref()
                    .to_vec()
            }
            Algorithm::RS256 => {
                let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(|_| KeyError::Generate)?;
                let der =
                    AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'static>>::as_der(&kp).map_err(|_| KeyError::Generate)?;
                der.as_ref().to_vec()
            }
            _ => return Err(KeyError::Unsupported),
        };
        let pem = pem_encode("PRIVATE KEY", &der);
        let key = SigningKey::from_pem(pem.as_bytes())?;
        Ok((key, pem))
    }

    fn from_pair(pair: KeyPairKind) -> SigningKey {
        let (jwk, thumb_input) = match &pair {
            KeyPairKind::Ed25519(k) => {
                let x = B64.encode(k.public_key().as_ref());
                (
                    json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"}),
                    format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
                )
            }
            KeyPairKind::Es256(k) => {
                // Uncompressed point: 0x04 || X (32) || Y (32).
                let p = k.public_key().as_ref();
                let (x, y) = (B64.encode(&p[1..33]), B64.encode(&p[33..65]));
                (
                    json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256"}),
                    format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
                )
            }
            KeyPairKind::Rs256(k) => {
                let pk = k.public_key();
                let n = B64.encode(pk.modulus().big_endian_without_leading_zero());
                let e = B64.encode(pk.exponent().big_endian_without_leading_zero());
                (
                    json!({"kty": "RSA", "n": n, "e": e, "alg": "RS256"}),
                    format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
                )
            }
        };
        // RFC 7638: SHA-256 over the required members in lexicographic order.
        let kid = B64.encode(Sha256::digest(thumb_input.as_bytes()));
        let mut jwk = jwk;
        if let Value::Object(m) = &mut jwk {
            m.insert("kid".into(), Value::String(kid.clone()));
            m.insert("use".into(), Value::String("sig".into()));
        }
        SigningKey { pair, kid, jwk }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.pair {
            KeyPairKind::Ed25519(_) => Algorithm::EdDSA,
            KeyPairKind::Es256(_) => Algorithm::ES256,
            KeyPairKind::Rs256(_) => Algorithm::RS256,
        }
    }

    /// RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK, with `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    /// The length in bytes of every signature [`Self::sign`] makes.
    pub fn signature_len(&self) -> usize {
        match &self.pair {
            KeyPairKind::Ed25519(_) => 64,
            // JWS form: r and s of 32 bytes each (RFC 7518 §3.4).
            KeyPairKind::Es256(_) => 64,
            KeyPairKind::Rs256(k) => k.public_modulus_len(),
        }
    }

    /// The signature of `message` (JWS form: raw r||s for ES256).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let rng = SystemRandom::new();
        match &self.pair {
            KeyPairKind::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
            KeyPairKind::Es256(k) => Ok(k.sign(&rng, message).map_err(|_| SignError)?.as_ref().to_vec()),
            KeyPairKind::Rs256(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig).map_err(|_| SignError)?;
                Ok(sig)
            }
        }
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_pem() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
            let (k, pem) = SigningKey::generate(alg).unwrap();
            let again = SigningKey::from_pem(pem.as_bytes()).unwrap();
            assert_eq!(k.kid(), again.kid());
            assert_eq!(again.algorithm(), alg);
            // The public JWK must verify what the key signs (checked with jsonwebtoken).
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(k.public_jwk().clone()).unwrap();
            let thumb = jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256).unwrap();
            assert_eq!(thumb, k.kid(), "kid is the RFC 7638 thumbprint for {alg:?}");
            let dk = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
            let msg = b"header.payload";
            let raw = k.sign(msg).unwrap();
            assert_eq!(raw.len(), k.signature_len(), "{alg:?}");
            let sig = B64.encode(raw);
            assert!(jsonwebtoken::crypto::verify(&sig, msg, &dk, alg).unwrap());
        }
    }

    #[test]
    fn rejects_garbage_pem() {
        assert!(SigningKey::from_pem(b"not a key").is_err());
    }
}
