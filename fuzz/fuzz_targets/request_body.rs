//! Fuzzes every request body the server parses (JSON and form), through the same extractor
//! code the handlers use. Input layout: one byte picks the endpoint, one the content type,
//! the rest is the body. Parsing must never panic, and a refusal must be a 4xx in fixed words
//! that do not quote the body (parser messages can carry secrets, so they are not passed on).
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
        // Our messages are fixed printable ASCII. A body that could not be part of one (it
        // holds a control or non-ASCII character) must never come back in the error. (A
        // body of plain words can equal part of a fixed message, and the fuzzer finds such
        // bodies by comparing with the message.)
        let description = refusal.description();
        assert!(
            description
                .chars()
                .all(|c| c == ' ' || c.is_ascii_graphic()),
            "the error has a character no fixed message has: {description:?}"
        );
        if body.len() >= 16
            && let Ok(text) = std::str::from_utf8(body)
            && text.chars().any(|c| c != ' ' && !c.is_ascii_graphic())
        {
            assert!(!description.contains(text), "the error quotes the body");
        }
    }
});
