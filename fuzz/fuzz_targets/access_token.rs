//! Fuzzes access-token (JWT) verification, and that of the other JWTs this server signs
//! (device cookies, `device+jwt`), with a real Ed25519 key ring. It must never panic, and
//! nothing the fuzzer makes may verify: forging an Ed25519 signature is out of its reach,
//! so any input that passes is a bug. Each input is tried twice: as sent, and as
//! `header.payload.signature` parts that are base64url-encoded here, with `KID` in the header
//! replaced by the ring's key id, so the fuzzer gets past the key look-up to the signature
//! check without having to guess a random kid.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use prismd::tokens::{AtRest, KeyRing, VerifyExpectations, keyring};

static RING: LazyLock<Option<KeyRing>> = LazyLock::new(|| {
    let record = keyring::generate(0, &AtRest::Plain).ok()?;
    KeyRing::from_records(&[record], &AtRest::Plain).ok()
});

const EXPECT: VerifyExpectations<'static> = VerifyExpectations {
    issuer: "https://auth.prism.test",
    audience: "https://auth.prism.test/api",
    now_secs: 1_800_000_000,
};

fuzz_target!(|data: &[u8]| {
    let Some(ring) = RING.as_ref() else {
        return;
    };
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = prismd::tokens::jwt::claimed_kid(token);
        assert!(
            ring.verify(token, &EXPECT).is_err(),
            "an unsigned token verified"
        );
        assert!(
            ring.verify_typed("device+jwt", token).is_none(),
            "an unsigned device cookie verified"
        );
    }
    let mut parts = data.splitn(3, |b| *b == b'.');
    let header =
        String::from_utf8_lossy(parts.next().unwrap_or_default()).replace("KID", ring.active_kid());
    let payload = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    );
    assert!(
        ring.verify(&token, &EXPECT).is_err(),
        "an unsigned token verified"
    );
    assert!(
        ring.verify_typed("device+jwt", &token).is_none(),
        "an unsigned device cookie verified"
    );
});
