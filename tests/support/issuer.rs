//! An OpenID issuer on loopback: discovery, a JWKS with an RS256 and an ES256 key,
//! ID tokens signed on demand, every fetch counted.

use super::*;

pub struct IssuerKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The PEM of the private key (tests that forge need the public parts too).
    pub pem: String,
}

impl IssuerKey {
    pub fn generate(alg: Algorithm, kid: &str) -> IssuerKey {
        let (key, pem) = SigningKey::generate(alg).unwrap();
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
            _ => unreachable!(),
        };
        let mut jwk = key.public_jwk().clone();
        jwk["kid"] = json!(kid);
        IssuerKey { kid: kid.to_string(), alg, encoding, jwk, pem }
    }
}

/// An OpenID issuer on loopback.
pub struct Issuer {
    pub addr: SocketAddr,
    pub url: String,
    pub rsa: Arc<IssuerKey>,
    pub ec: Arc<IssuerKey>,
    /// Keys published in the JWKS (tests can add or remove).
    pub published: Arc<Mutex<Vec<Value>>>,
    pub jwks_fetches: Arc<AtomicUsize>,
    pub discovery_fetches: Arc<AtomicUsize>,
    /// Every path requested of the issuer (to prove no jku/x5u fetch reached it).
    pub paths: Arc<Mutex<Vec<String>>>,
    pub down: Arc<AtomicBool>,
}

impl Issuer {
    pub async fn start() -> Issuer {
        let rsa = Arc::new(IssuerKey::generate(Algorithm::RS256, "rsa-1"));
        let ec = Arc::new(IssuerKey::generate(Algorithm::ES256, "ec-1"));
        let published = Arc::new(Mutex::new(vec![rsa.jwk.clone(), ec.jwk.clone()]));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let discovery_fetches = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let url_cell: Arc<Mutex<String>> = Arc::default();
        let addr = serve({
            let (published, jwks_fetches, discovery_fetches, paths, down, url_cell) = (
                published.clone(),
                jwks_fetches.clone(),
                discovery_fetches.clone(),
                paths.clone(),
                down.clone(),
                url_cell.clone(),
            );
            move |req: Request<Incoming>| {
                let path = req.uri().path().to_string();
                paths.lock().unwrap().push(path.clone());
                let resp = if down.load(SeqCst) {
                    json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "down"}))
                } else {
                    match path.as_str() {
                        "/.well-known/openid-configuration" => {
                            discovery_fetches.fetch_add(1, SeqCst);
                            let url = url_cell.lock().unwrap().clone();
                            json_response(
                                StatusCode::OK,
                                &json!({"issuer": url, "jwks_uri": format!("{url}.well-known/jwks.json"),
                                        "id_token_signing_alg_values_supported": ["RS256", "ES256"]}),
                            )
                        }
                        "/.well-known/jwks.json" => {
                            jwks_fetches.fetch_add(1, SeqCst);
                            json_response(StatusCode::OK, &json!({"keys": published.lock().unwrap().clone()}))
                        }
                        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
                    }
                };
                async move { resp }
            }
        })
        .await;
        let url = format!("http://{addr}/");
        *url_cell.lock().unwrap() = url.clone();
        Issuer { addr, url, rsa, ec, published, jwks_fetches, discovery_fetches, paths, down }
    }

    /// Standard valid claims for `sub`, audience client-1.
    pub fn claims(&self, sub: &str) -> Value {
        let n = now();
        json!({"iss": self.url, "sub": sub, "aud": CLIENT_1, "iat": n, "exp": n + 600,
               "email": "u1@example.com", "name": "User One"})
    }

    pub fn sign(&self, key: &IssuerKey, claims: &Value) -> String {
        let mut h = Header::new(key.alg);
        h.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&h, claims, &key.encoding).unwrap()
    }

    pub fn sign_header(&self, key: &IssuerKey, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &key.encoding).unwrap()
    }

    /// A valid RS256 ID token for `sub`.
    pub fn token(&self, sub: &str) -> String {
        self.sign(&self.rsa, &self.claims(sub))
    }

    /// A valid ES256 ID token for `sub`.
    pub fn token_es256(&self, sub: &str) -> String {
        self.sign(&self.ec, &self.claims(sub))
    }
}

/// Builds a compact token from raw parts (for malformed and forged tokens).
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()), B64.encode(signature))
}
