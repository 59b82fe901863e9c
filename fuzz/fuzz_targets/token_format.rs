//! Fuzzes the refresh-token format check. It must never panic; whatever it accepts must have
//! the documented shape (prefix, length, base62 only) that docs/design.md's scanner regex
//! promises; and the checksum must catch every one-character change of a real token.
//!
//! Each input is tried as text, and as edits to a freshly generated token (pairs of bytes:
//! position, new character), so the fuzzer explores near-valid tokens without a real one
//! being committed as a seed.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use prism_proto::token_format::{SecretKind, generate, validate};

const KIND: SecretKind = SecretKind::RefreshToken;

static GENUINE: LazyLock<Option<String>> = LazyLock::new(|| generate(KIND).ok());

fn check(text: &str) {
    if validate(KIND, text).is_ok() {
        let rest = text.strip_prefix(KIND.prefix());
        assert!(rest.is_some(), "accepted without the prefix");
        assert_eq!(
            text.len(),
            KIND.token_len(),
            "accepted with the wrong length"
        );
        assert!(
            rest.is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_alphanumeric())),
            "accepted a character outside base62"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    let Some(genuine) = GENUINE.as_ref() else {
        return;
    };
    assert!(
        validate(KIND, genuine).is_ok(),
        "a generated token is refused"
    );
    let mut edited = genuine.clone().into_bytes();
    for edit in data.chunks_exact(2) {
        let position = usize::from(edit[0]) % edited.len();
        edited[position] = edit[1];
    }
    let Ok(edited) = String::from_utf8(edited) else {
        return;
    };
    check(&edited);
    let changed = edited
        .bytes()
        .zip(genuine.bytes())
        .filter(|(a, b)| a != b)
        .count();
    if changed == 1 {
        assert!(
            validate(KIND, &edited).is_err(),
            "a one-character change went unnoticed"
        );
    }
});
