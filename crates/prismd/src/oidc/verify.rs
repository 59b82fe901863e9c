//! [`OidcVerifier`]: the per-issuer key cache (refresh, stale serving, unknown-kid refetch,
//! one fetch at a time per issuer) and the checks of one token: algorithm, key, signature,
//! time claims.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::Value;

use super::keys::{Alg, KeySet, Selection};
use super::{
    CLOCK_SKEW_SECS, OidcSettings, OidcSetupError, UnverifiedToken, VerifiedToken, VerifyError,
    check_issuer_url, fetch, for_message,
};

/// Issuers whose keys are remembered; beyond this the least recently fetched one is dropped.
/// Only issuers some trust policy names are ever verified, so this is generous.
const MAX_ISSUERS: usize = 1024;

/// Verifies OIDC tokens against their issuers' keys, which it fetches and caches. One per
/// server; `Send + Sync`.
pub struct OidcVerifier {
    settings: OidcSettings,
    agent: ureq::Agent,
    issuers: Mutex<HashMap<String, IssuerState>>,
}

/// What is known about one issuer's keys.
struct IssuerState {
    /// The last set fetched successfully, and when.
    keys: Option<(Arc<KeySet>, Instant)>,
    /// When the last fetch started (successful or not).
    last_attempt: Option<Instant>,
    /// Why the last fetch failed; cleared by a success.
    last_error: Option<VerifyError>,
    /// Finished fetches, so that callers who waited for another's fetch use its outcome.
    fetches: u64,
    /// Held while fetching, so that concurrent verifications of one issuer share one fetch.
    /// A tokio mutex: it is held across the fetch's await.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl IssuerState {
    fn new() -> Self {
        Self {
            keys: None,
            last_attempt: None,
            last_error: None,
            fetches: 0,
            gate: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

/// What the caller needs from the cache.
enum Need {
    /// Keys young enough to use.
    Current,
    /// A set newer than this one, which lacked the token's key.
    NewerThan(Arc<KeySet>),
}

/// What the cache can do without fetching.
enum Decision {
    Answer(Result<Arc<KeySet>, VerifyError>),
    Fetch,
}

impl OidcVerifier {
    /// Builds the HTTP client; fails on an unusable `extra_ca_pem`.
    pub fn new(settings: OidcSettings) -> Result<Self, OidcSetupError> {
        let agent = fetch::agent(&settings)?;
        Ok(Self {
            settings,
            agent,
            issuers: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies `token`'s signature with its issuer's key and its time claims at `now_secs`
    /// (Unix seconds): `exp` and `iat` are required; refused when now > exp + skew, or `nbf`
    /// or `iat` > now + skew. Audience, maximum age and claim conditions are the caller's.
    /// Errors that mean the issuer could not be asked answer `is_unavailable()`; that includes
    /// a token whose `kid` is not cached when fetching the keys again fails.
    pub async fn verify(
        &self,
        token: &UnverifiedToken,
        now_secs: i64,
    ) -> Result<VerifiedToken, VerifyError> {
        // The header picks nothing before this: unsupported algorithms (none, HMAC) never get
        // near a key.
        let alg = match token.header.get("alg") {
            Some(Value::String(alg)) => Alg::from_header(alg)?,
            Some(_) => return Err(VerifyError::Malformed("its alg is not a string".into())),
            None => return Err(VerifyError::Malformed("its header has no alg".into())),
        };
        if token.header.contains_key("crit") {
            // RFC 7515 §4.1.11: extensions we do not understand must not be ignored.
            return Err(VerifyError::Malformed(
                "its header lists critical extensions (crit), which are not supported".into(),
            ));
        }
        let kid = match token.header.get("kid") {
            Some(Value::String(kid)) => Some(kid.as_str()),
            None | Some(Value::Null) => None,
            Some(_) => return Err(VerifyError::Malformed("its kid is not a string".into())),
        };
        check_issuer_url(&token.issuer, self.settings.allow_http_issuers).map_err(|why| {
            VerifyError::Malformed(format!("its issuer cannot be asked for keys: {why}"))
        })?;

        let keys = self.keys(&token.issuer, Need::Current).await?;
        let keys = match keys.select(alg, kid) {
            Selection::Found(_) => keys,
            Selection::Refused(err) => return Err(err),
            // Perhaps the issuer rotated its keys since they were fetched.
            Selection::Missing => self.keys(&token.issuer, Need::NewerThan(keys)).await?,
        };
        let key = match keys.select(alg, kid) {
            Selection::Found(key) => key,
            Selection::Refused(err) => return Err(err),
            Selection::Missing => {
                return Err(VerifyError::UnknownKey {
                    kid: kid.map(for_message),
                });
            }
        };
        if !key.verify(alg, token.signing_input.as_bytes(), &token.signature) {
            return Err(VerifyError::BadSignature);
        }
        check_times(token, now_secs)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, IssuerState>> {
        // Nothing panics while holding it; a poisoned map is still consistent.
        self.issuers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keys of `issuer` as `need` says, fetching them when the cache cannot answer. At most one
    /// fetch per issuer runs; who waited for it uses its outcome.
    async fn keys(&self, issuer: &str, need: Need) -> Result<Arc<KeySet>, VerifyError> {
        let (gate, fetches_seen) = {
            let mut issuers = self.lock();
            let state = state_of(&mut issuers, issuer);
            match self.decide(state, &need, Instant::now()) {
                Decision::Fetch => (state.gate.clone(), state.fetches),
                Decision::Answer(answer) => return answer,
            }
        };
        let _fetching = gate.lock().await;
        {
            let mut issuers = self.lock();
            let state = state_of(&mut issuers, issuer);
            let now = Instant::now();
            if state.fetches != fetches_seen {
                // Someone else fetched while this one waited: use that unless the interval
                // allows (and the need still wants) another try.
                if let Decision::Answer(answer) = self.decide(state, &need, now) {
                    return answer;
                }
            }
            state.last_attempt = Some(now);
        }

        let agent = self.agent.clone();
        let owned_issuer = issuer.to_owned();
        let allow_http = self.settings.allow_http_issuers;
        let fetched = tokio::task::spawn_blocking(move || {
            fetch::fetch_keys(&agent, &owned_issuer, allow_http)
        })
        .await
        .unwrap_or_else(|err| {
            Err(VerifyError::IssuerUnreachable {
                issuer: issuer.to_owned(),
                reason: format!("the fetch was interrupted: {err}"),
            })
        });

        let mut issuers = self.lock();
        let state = state_of(&mut issuers, issuer);
        state.fetches += 1;
        let now = Instant::now();
        match fetched {
            Ok(set) => {
                if set.is_empty() {
                    tracing::warn!(issuer, "the issuer publishes no usable signing key");
                }
                let set = Arc::new(set);
                state.keys = Some((set.clone(), now));
                state.last_error = None;
                Ok(set)
            }
            Err(err) => {
                state.last_error = Some(err.clone());
                match (&need, self.usable_stale(state, now)) {
                    (Need::Current, Some(keys)) => {
                        tracing::warn!(
                            issuer,
                            error = %err,
                            "could not refresh the issuer's signing keys; using the cached ones"
                        );
                        Ok(keys)
                    }
                    _ => {
                        tracing::warn!(issuer, error = %err, "could not fetch the issuer's signing keys");
                        Err(err)
                    }
                }
            }
        }
    }

    fn decide(&self, state: &IssuerState, need: &Need, now: Instant) -> Decision {
        let settings = &self.settings;
        let may_fetch = state.last_attempt.is_none_or(|at| {
            now.saturating_duration_since(at) >= settings.unknown_kid_refetch_interval
        });
        match need {
            Need::Current => {
                if let Some((keys, at)) = &state.keys
                    && now.saturating_duration_since(*at) < settings.jwks_refresh
                {
                    return Decision::Answer(Ok(keys.clone()));
                }
                if may_fetch {
                    return Decision::Fetch;
                }
                // A fetch was tried moments ago: do not ask again yet.
                match (self.usable_stale(state, now), &state.last_error) {
                    (Some(keys), _) => Decision::Answer(Ok(keys)),
                    (None, Some(err)) => Decision::Answer(Err(err.clone())),
                    (None, None) => Decision::Fetch,
                }
            }
            Need::NewerThan(seen) => match &state.keys {
                Some((keys, _)) if !Arc::ptr_eq(keys, seen) => Decision::Answer(Ok(keys.clone())),
                _ if may_fetch => Decision::Fetch,
                // Too soon to ask again: the same set, so the key stays unknown.
                _ => Decision::Answer(Ok(seen.clone())),
            },
        }
    }

    /// The cached keys while younger than the maximum age.
    fn usable_stale(&self, state: &IssuerState, now: Instant) -> Option<Arc<KeySet>> {
        let (keys, at) = state.keys.as_ref()?;
        (now.saturating_duration_since(*at) < self.settings.jwks_max_age).then(|| keys.clone())
    }
}

fn state_of<'m>(
    issuers: &'m mut HashMap<String, IssuerState>,
    issuer: &str,
) -> &'m mut IssuerState {
    if !issuers.contains_key(issuer) && issuers.len() >= MAX_ISSUERS {
        let oldest = issuers
            .iter()
            .min_by_key(|(_, s)| s.last_attempt)
            .map(|(name, _)| name.clone());
        if let Some(oldest) = oldest {
            issuers.remove(&oldest);
        }
    }
    issuers
        .entry(issuer.to_owned())
        .or_insert_with(IssuerState::new)
}

/// The time claims, then the verified token.
fn check_times(token: &UnverifiedToken, now: i64) -> Result<VerifiedToken, VerifyError> {
    let claims = &token.payload;
    let exp = numeric_date(claims, "exp")?.ok_or(VerifyError::MissingClaim("exp"))?;
    let iat = numeric_date(claims, "iat")?.ok_or(VerifyError::MissingClaim("iat"))?;
    let nbf = numeric_date(claims, "nbf")?;
    if now > exp.saturating_add(CLOCK_SKEW_SECS) {
        return Err(VerifyError::Expired { exp });
    }
    let limit = now.saturating_add(CLOCK_SKEW_SECS);
    if let Some(nbf) = nbf.filter(|nbf| *nbf > limit) {
        return Err(VerifyError::NotYetValid {
            claim: "nbf",
            at: nbf,
        });
    }
    if iat > limit {
        return Err(VerifyError::NotYetValid {
            claim: "iat",
            at: iat,
        });
    }
    let audiences = match claims.get("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|aud| aud.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                VerifyError::Malformed("its aud list holds something other than strings".into())
            })?,
        Some(_) => {
            return Err(VerifyError::Malformed(
                "its aud is neither a string nor a list of strings".into(),
            ));
        }
    };
    let jti = match claims.get("jti") {
        None | Some(Value::Null) => None,
        Some(Value::String(jti)) if jti.is_empty() => None,
        Some(Value::String(jti)) => Some(jti.clone()),
        Some(_) => return Err(VerifyError::Malformed("its jti is not a string".into())),
    };
    Ok(VerifiedToken {
        issuer: token.issuer.clone(),
        claims: claims.clone(),
        audiences,
        exp,
        iat,
        nbf,
        replay_key: match &jti {
            Some(jti) => jti.clone(),
            None => format!("sha256:{}", token.token_sha256),
        },
        jti,
    })
}

/// A NumericDate claim in whole seconds (fractions dropped), `None` when absent.
fn numeric_date(
    claims: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, VerifyError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(secs), _) => Ok(Some(secs)),
            (None, Some(secs)) if secs.is_finite() => Ok(Some(secs.floor() as i64)),
            _ => Err(VerifyError::Malformed(format!(
                "its {name} is out of range"
            ))),
        },
        Some(_) => Err(VerifyError::Malformed(format!(
            "its {name} is not a number of seconds"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::oidc::peek;
    use crate::oidc::test_issuer::{TestIssuer, TestKey, TestResult, forged};

    const NOW: i64 = 1_800_000_000;

    fn settings() -> OidcSettings {
        OidcSettings {
            allow_http_issuers: true,
            unknown_kid_refetch_interval: Duration::ZERO,
            ..OidcSettings::default()
        }
    }

    fn claims(issuer: &TestIssuer) -> Value {
        json!({
            "iss": issuer.url, "sub": "repo:acme/app:ref:refs/heads/main", "aud": "prism",
            "iat": NOW - 10, "exp": NOW + 300, "jti": "run-1",
        })
    }

    /// `claims` with `changes` merged in (`null` removes a claim).
    fn with(mut base: Value, changes: Value) -> Value {
        if let (Value::Object(base), Value::Object(changes)) = (&mut base, changes) {
            for (name, value) in changes {
                if value.is_null() {
                    base.remove(&name);
                } else {
                    base.insert(name, value);
                }
            }
        }
        base
    }

    async fn check(verifier: &OidcVerifier, token: &str) -> Result<VerifiedToken, VerifyError> {
        verifier.verify(&peek(token)?, NOW).await
    }

    #[tokio::test]
    async fn verifies_rs256_es256_and_eddsa() -> TestResult {
        let (rsa, ec, ed) = (TestKey::rsa("rsa")?, TestKey::ec("ec")?, TestKey::ed("ed")?);
        let issuer = TestIssuer::start(&[&rsa, &ec, &ed]).await?;
        let verifier = OidcVerifier::new(settings())?;
        for key in [&rsa, &ec, &ed] {
            let verified = check(&verifier, &key.token(&claims(&issuer))?).await?;
            assert_eq!(verified.issuer, issuer.url);
            assert_eq!(verified.audiences, ["prism"]);
            assert_eq!(
                (verified.exp, verified.iat, verified.nbf),
                (NOW + 300, NOW - 10, None)
            );
            assert_eq!(verified.replay_key, "run-1");
            assert_eq!(verified.claims["sub"], "repo:acme/app:ref:refs/heads/main");
        }
        // One fetch served all three.
        assert_eq!((issuer.discovery_hits(), issuer.jwks_hits()), (1, 1));
        let no_jti = ec.token(&with(
            claims(&issuer),
            json!({"jti": null, "aud": ["a", "b"], "nbf": NOW, "exp": (NOW + 300) as f64 + 0.5}),
        ))?;
        let verified = check(&verifier, &no_jti).await?;
        assert_eq!(verified.audiences, ["a", "b"]);
        assert_eq!(
            (verified.jti, verified.nbf, verified.exp),
            (None, Some(NOW), NOW + 300)
        );
        assert!(verified.replay_key.starts_with("sha256:") && verified.replay_key.len() == 71);
        // A trailing slash in the issuer is not doubled in the discovery URL.
        let slash = format!("{}/", issuer.url);
        issuer.claim_issuer(&slash);
        check(
            &verifier,
            &ed.token(&with(claims(&issuer), json!({"iss": slash})))?,
        )
        .await?;
        Ok(())
    }

    #[tokio::test]
    async fn refuses_none_hmac_and_mismatched_keys() -> TestResult {
        let (rsa, ec) = (TestKey::rsa("rsa")?, TestKey::ec("ec")?);
        let issuer = TestIssuer::start(&[&rsa, &ec]).await?;
        let verifier = OidcVerifier::new(settings())?;
        let body = claims(&issuer);
        let none = forged(&json!({"alg": "none", "kid": "rsa"}), &body, None)?;
        let hmac = forged(
            &json!({"alg": "HS256", "kid": "rsa"}),
            &body,
            Some(&rsa.public_bytes()),
        )?;
        for token in [none, hmac] {
            let err = check(&verifier, &token).await.err();
            assert!(
                matches!(err, Some(VerifyError::UnsupportedAlgorithm(_))),
                "{err:?}"
            );
        }
        // Refused before any key was fetched, let alone used.
        assert_eq!(issuer.discovery_hits(), 0);

        // An RS256 header naming the EC key (signed with RSA, so only the key type can tell).
        let confused = rsa.sign(&json!({"alg": "RS256", "kid": "ec"}), &body)?;
        let err = check(&verifier, &confused).await.err();
        assert!(
            matches!(&err, Some(VerifyError::KeyMismatch { kid, detail }) if kid == "\"ec\"" && detail.contains("P-256")),
            "{err:?}"
        );
        // The JWK's own alg differs from the header's.
        let mut declared = ec.jwk();
        declared["alg"] = json!("ES384");
        issuer.set_raw_jwks(vec![rsa.jwk(), declared]);
        let fresh = OidcVerifier::new(settings())?;
        let err = check(&fresh, &ec.token(&body)?).await.err();
        assert!(
            matches!(&err, Some(VerifyError::KeyMismatch { detail, .. }) if detail.contains("ES384")),
            "{err:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn refuses_bad_signatures_and_times() -> TestResult {
        let (ec, other) = (TestKey::ec("ec")?, TestKey::ec("ec")?);
        let issuer = TestIssuer::start(&[&ec]).await?;
        let verifier = OidcVerifier::new(settings())?;
        let body = claims(&issuer);
        // Signed by another key under the same kid; and a payload swapped under a signature.
        let stranger = other.token(&body)?;
        let good = ec.token(&body)?;
        let evil = ec.token(&with(body.clone(), json!({"sub": "repo:evil/app"})))?;
        let spliced = {
            let good: Vec<&str> = good.split('.').collect();
            let evil: Vec<&str> = evil.split('.').collect();
            format!("{}.{}.{}", good[0], evil[1], good[2])
        };
        for token in [stranger, spliced] {
            assert_eq!(
                check(&verifier, &token).await.err(),
                Some(VerifyError::BadSignature)
            );
        }

        let cases = [
            (
                json!({"exp": NOW - 61}),
                Some(VerifyError::Expired { exp: NOW - 61 }),
            ),
            (json!({"exp": NOW - 60}), None),
            (
                json!({"nbf": NOW + 61}),
                Some(VerifyError::NotYetValid {
                    claim: "nbf",
                    at: NOW + 61,
                }),
            ),
            (json!({"nbf": NOW + 60, "iat": NOW + 60}), None),
            (
                json!({"iat": NOW + 61}),
                Some(VerifyError::NotYetValid {
                    claim: "iat",
                    at: NOW + 61,
                }),
            ),
            (json!({"exp": null}), Some(VerifyError::MissingClaim("exp"))),
            (json!({"iat": null}), Some(VerifyError::MissingClaim("iat"))),
            (
                json!({"exp": "soon"}),
                Some(VerifyError::Malformed(
                    "its exp is not a number of seconds".into(),
                )),
            ),
            (
                json!({"aud": 5}),
                Some(VerifyError::Malformed(
                    "its aud is neither a string nor a list of strings".into(),
                )),
            ),
        ];
        for (changes, expected) in cases {
            let token = ec.token(&with(body.clone(), changes.clone()))?;
            assert_eq!(check(&verifier, &token).await.err(), expected, "{changes}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn unknown_kid_refetches_and_finds_a_rotated_key() -> TestResult {
        let (old, new) = (TestKey::ed("old")?, TestKey::ed("new")?);
        let issuer = TestIssuer::start(&[&old]).await?;
        let verifier = OidcVerifier::new(settings())?;
        check(&verifier, &old.token(&claims(&issuer))?).await?;
        assert_eq!(issuer.jwks_hits(), 1);
        let token = new.token(&claims(&issuer))?;
        assert_eq!(
            check(&verifier, &token).await.err(),
            Some(VerifyError::UnknownKey {
                kid: Some("\"new\"".into())
            })
        );
        assert_eq!(issuer.jwks_hits(), 2);
        issuer.set_keys(&[&old, &new]);
        check(&verifier, &token).await?;
        assert_eq!(issuer.jwks_hits(), 3);
        Ok(())
    }

    #[tokio::test]
    async fn unknown_kids_refetch_once_per_interval() -> TestResult {
        let (known, unknown) = (TestKey::ec("known")?, TestKey::ec("unknown")?);
        let issuer = TestIssuer::start(&[&known]).await?;
        let interval = Duration::from_millis(800);
        let verifier = OidcVerifier::new(OidcSettings {
            unknown_kid_refetch_interval: interval,
            ..settings()
        })?;
        check(&verifier, &known.token(&claims(&issuer))?).await?;
        let token = unknown.token(&claims(&issuer))?;
        // Right after the first fetch: no refetch yet.
        assert!(check(&verifier, &token).await.is_err());
        assert_eq!(issuer.jwks_hits(), 1);
        tokio::time::sleep(interval + Duration::from_millis(100)).await;
        for _ in 0..3 {
            let err = check(&verifier, &token).await.err();
            assert!(
                matches!(err, Some(VerifyError::UnknownKey { .. })),
                "{err:?}"
            );
        }
        assert_eq!(issuer.jwks_hits(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn tokens_without_kid_need_exactly_one_fitting_key() -> TestResult {
        let (first, second, ed) = (TestKey::ec("a")?, TestKey::ec("b")?, TestKey::ed("c")?);
        let issuer = TestIssuer::start(&[&first, &ed]).await?;
        let verifier = OidcVerifier::new(settings())?;
        let token = first.sign(&json!({"alg": "ES256"}), &claims(&issuer))?;
        check(&verifier, &token).await?;
        issuer.set_keys(&[&first, &second, &ed]);
        let fresh = OidcVerifier::new(settings())?;
        assert_eq!(
            check(&fresh, &token).await.err(),
            Some(VerifyError::UnknownKey { kid: None })
        );
        Ok(())
    }

    #[tokio::test]
    async fn unreachable_issuers() -> TestResult {
        let key = TestKey::ec("k")?;
        let issuer = TestIssuer::start(&[&key]).await?;
        let token = key.token(&claims(&issuer))?;

        // Down, nothing cached.
        issuer.set_down(true);
        let verifier = OidcVerifier::new(settings())?;
        let err = check(&verifier, &token).await.err();
        assert!(
            err.as_ref().is_some_and(VerifyError::is_unavailable),
            "{err:?}"
        );
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains(&issuer.url) && text.contains("503") && !text.contains(&token));
        issuer.set_down(false);
        check(&verifier, &token).await?;

        // Down with keys due for refresh but younger than the maximum age: still verifies.
        let stale_ok = OidcVerifier::new(OidcSettings {
            jwks_refresh: Duration::ZERO,
            ..settings()
        })?;
        check(&stale_ok, &token).await?;
        issuer.set_down(true);
        let hits = issuer.discovery_hits();
        check(&stale_ok, &token).await?;
        assert_eq!(issuer.discovery_hits(), hits + 1, "a refresh was tried");

        // Past the maximum age: unavailable.
        issuer.set_down(false);
        let too_old = OidcVerifier::new(OidcSettings {
            jwks_refresh: Duration::ZERO,
            jwks_max_age: Duration::ZERO,
            ..settings()
        })?;
        check(&too_old, &token).await?;
        issuer.set_down(true);
        let err = check(&too_old, &token).await.err();
        assert!(
            matches!(err, Some(VerifyError::IssuerUnreachable { .. })),
            "{err:?}"
        );

        // Fresh keys need no fetch at all.
        let hits = issuer.discovery_hits();
        check(&verifier, &token).await?;
        assert_eq!(issuer.discovery_hits(), hits);
        Ok(())
    }

    #[tokio::test]
    async fn failing_issuers_are_retried_once_per_interval() -> TestResult {
        let key = TestKey::ec("k")?;
        let issuer = TestIssuer::start(&[&key]).await?;
        issuer.set_down(true);
        let verifier = OidcVerifier::new(OidcSettings {
            unknown_kid_refetch_interval: Duration::from_secs(3600),
            ..settings()
        })?;
        let token = key.token(&claims(&issuer))?;
        for _ in 0..3 {
            let err = check(&verifier, &token).await.err();
            assert!(
                err.as_ref().is_some_and(VerifyError::is_unavailable),
                "{err:?}"
            );
        }
        assert_eq!(issuer.discovery_hits(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn discovery_must_name_the_same_issuer() -> TestResult {
        let key = TestKey::ec("k")?;
        let issuer = TestIssuer::start(&[&key]).await?;
        issuer.claim_issuer("https://elsewhere.example");
        let verifier = OidcVerifier::new(settings())?;
        let err = check(&verifier, &key.token(&claims(&issuer))?).await.err();
        assert!(
            matches!(&err, Some(e @ VerifyError::BadIssuerMetadata { reason, .. })
                if e.is_unavailable() && reason.contains("elsewhere.example")),
            "{err:?}"
        );
        assert_eq!(issuer.jwks_hits(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn http_issuers_need_the_test_flag() -> TestResult {
        let key = TestKey::ec("k")?;
        let issuer = TestIssuer::start(&[&key]).await?;
        let verifier = OidcVerifier::new(OidcSettings::default())?;
        let err = check(&verifier, &key.token(&claims(&issuer))?).await.err();
        assert!(matches!(err, Some(VerifyError::Malformed(m)) if m.contains("--oidc-allow-http")));
        assert_eq!(issuer.discovery_hits(), 0);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_verifications_share_one_fetch() -> TestResult {
        let key = TestKey::ec("k")?;
        let issuer = TestIssuer::start(&[&key]).await?;
        let verifier = Arc::new(OidcVerifier::new(settings())?);
        let token = key.token(&claims(&issuer))?;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (verifier, token) = (verifier.clone(), token.clone());
                // Also proves the future is Send.
                tokio::spawn(async move { check(&verifier, &token).await.map(|_| ()) })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        assert_eq!((issuer.discovery_hits(), issuer.jwks_hits()), (1, 1));
        Ok(())
    }

    #[test]
    fn bad_ca_files_are_refused() {
        let with_ca = |pem: &[u8]| {
            OidcVerifier::new(OidcSettings {
                extra_ca_pem: Some(pem.to_vec()),
                ..OidcSettings::default()
            })
        };
        assert!(matches!(
            with_ca(b"nothing here"),
            Err(OidcSetupError::NoCaCertificate)
        ));
        assert!(with_ca(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
    }
}
