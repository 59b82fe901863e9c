//! Fuzzes every request body the server parses (JSON and form), through the same extractor
//! code the handlers use. Input layout: one byte picks the endpoint, one the content type,
//! the rest is the body. Parsing must never panic, and a refusal must be a 4xx whose text
//! does not quote the body (parser messages can carry secrets, so they are not passed on).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prismd::http::{REQUEST_BODY_KINDS, parse_request_body};

const CONTENT_TYPES: [&str; 6] = [
    "application/json",
    "application/x-www-form-urlencoded",
    "application/json; charset=utf-8",
    "APPLICATION/X-WWW-FORM-URLENCODED ; charset=UTF-8",
    "text/plain",
    "",
];

fuzz_target!(|data: &[u8]| {
    let [kind, content_type, body @ ..] = data else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(*content_type) % CONTENT_TYPES.len()];
    if let Err(refusal) = parse_request_body(*kind % REQUEST_BODY_KINDS, content_type, body) {
        assert!(refusal.status().is_client_error(), "{:?}", refusal.status());
        // A body long enough not to be a coincidental substring of our fixed messages must
        // never come back in the error.
        if body.len() >= 32
            && let Ok(text) = std::str::from_utf8(body)
        {
            assert!(
                !refusal.description().contains(text),
                "the error quotes the body"
            );
        }
    }
});
