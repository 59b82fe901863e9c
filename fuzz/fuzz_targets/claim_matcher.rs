//! Fuzzes the trust-policy claim matcher (prismd::oidc::claims). Nothing may panic; the glob
//! matcher must agree with a plain dynamic-programming matcher (pattern and text tried both
//! ways round); a condition must match exactly when its glob or equality says so; and
//! condition lists (as JSON) go through validation and matching against claims (as JSON).
//!
//! Input: first byte picks the condition's kind; the rest is `pattern NUL text` (lossy UTF-8),
//! or, when it parses, `conditions-JSON NUL claims-JSON`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prismd::oidc::claims::{
    ClaimCondition, MatchKind, first_failing, glob_match, validate_conditions,
};
use serde_json::{Map, Value};

/// Reference: whether `t` matches `p`, by filling the usual table row by row.
fn reference(p: &[char], t: &[char]) -> bool {
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for &pc in p {
        let mut next = vec![false; t.len() + 1];
        next[0] = pc == '*' && row[0];
        for j in 1..=t.len() {
            next[j] = match pc {
                '*' => row[j] || next[j - 1],
                '?' => row[j - 1],
                c => row[j - 1] && c == t[j - 1],
            };
        }
        row = next;
    }
    row[t.len()]
}

fn compare(pattern: &str, text: &str) {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let fast = glob_match(pattern, text);
    // The reference is quadratic; keep each run quick.
    if p.len().saturating_mul(t.len()) <= 1 << 20 {
        assert_eq!(fast, reference(&p, &t), "glob {pattern:?} on {text:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut halves = rest.splitn(2, |b| *b == 0);
    let first = String::from_utf8_lossy(halves.next().unwrap_or_default()).into_owned();
    let second = String::from_utf8_lossy(halves.next().unwrap_or_default()).into_owned();

    compare(&first, &second);
    compare(&second, &first);

    let kind = if selector & 1 == 0 {
        MatchKind::Exact
    } else {
        MatchKind::Glob
    };
    let condition = ClaimCondition {
        claim: "c".to_owned(),
        kind,
        value: first.clone(),
    };
    let mut claims = Map::new();
    claims.insert("c".to_owned(), Value::String(second.clone()));
    let expected = match kind {
        MatchKind::Exact => first == second,
        MatchKind::Glob => glob_match(&first, &second),
    };
    assert_eq!(condition.matches(&claims), expected, "string claim");
    // The text as a JSON value: numbers match by their JSON text, other kinds never.
    if let Ok(value) = serde_json::from_str::<Value>(&second) {
        let text = match &value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        claims.insert("c".to_owned(), value);
        let expected = text.is_some_and(|text| match kind {
            MatchKind::Exact => first == text,
            MatchKind::Glob => glob_match(&first, &text),
        });
        assert_eq!(condition.matches(&claims), expected, "JSON claim");
    }
    let _ = validate_conditions(std::slice::from_ref(&condition));

    // Conditions and claims as JSON documents.
    if let Ok(conditions) = serde_json::from_str::<Vec<ClaimCondition>>(&first) {
        let valid = validate_conditions(&conditions);
        if valid.is_ok() {
            assert!(!conditions.is_empty() && conditions.len() <= 32);
        }
        if let Ok(claims) = serde_json::from_str::<Map<String, Value>>(&second) {
            let failing = first_failing(&conditions, &claims);
            assert_eq!(
                failing.is_none(),
                conditions.iter().all(|c| c.matches(&claims))
            );
        }
    }
});
