//! Trust-policy claim conditions: the glob matcher, matching a condition against a verified
//! token's claims, and the validation of a policy's condition list (the stable subject rule).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How a condition's value is compared with the claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    /// The claim equals the value.
    Exact,
    /// The value is a glob ([`glob_match`]) the claim must match.
    Glob,
}

/// One condition of a trust policy: `claim` (a top-level claim name) must match `value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimCondition {
    pub claim: String,
    #[serde(rename = "match")]
    pub kind: MatchKind,
    pub value: String,
}

/// Most conditions one policy may have.
pub const MAX_CONDITIONS: usize = 32;
/// Longest claim name, in characters.
pub const MAX_CLAIM_NAME_CHARS: usize = 100;
/// Longest condition value, in characters.
pub const MAX_VALUE_CHARS: usize = 1000;
/// Claims that name something which cannot be renamed into someone else's hands (ids, and
/// `sub`, which embeds the owner and repository or project path).
pub const STABLE_SUBJECT_CLAIMS: [&str; 5] = [
    "sub",
    "repository_id",
    "repository_owner_id",
    "project_id",
    "namespace_id",
];

/// The refusal when no condition pins a stable subject.
pub const STABLE_SUBJECT_MESSAGE: &str = "at least one condition must pin a stable subject: an \
     exact match on sub, repository_id, repository_owner_id, project_id or namespace_id, or a \
     glob on one of them whose text before the first wildcard contains a '/' (e.g. repo:my-org/*)";

/// Whether `text` matches `pattern`: `*` matches any run of characters (also empty), `?`
/// exactly one character (not byte), everything else itself, case-sensitively; no escapes.
///
/// The classic two-pointer algorithm: on a mismatch it goes back only to the last `*` seen
/// (an earlier `*` can never do better), so the time is at most pattern × text, never
/// exponential, whatever the input.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // The pattern position just after the last `*`, and the text position it was tried from.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                p += 1;
                backtrack = Some((p, t));
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                // Let the last `*` swallow one more character and retry from there.
                Some((after_star, from)) => {
                    p = after_star;
                    t = from + 1;
                    backtrack = Some((after_star, from + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

impl ClaimCondition {
    /// Whether the claims satisfy this condition. The claim must be a JSON string, or a number
    /// (compared by its JSON text, e.g. `123`); anything else, or a missing claim, never matches.
    pub fn matches(&self, claims: &Map<String, Value>) -> bool {
        let number;
        let text = match claims.get(&self.claim) {
            Some(Value::String(text)) => text.as_str(),
            Some(Value::Number(n)) => {
                number = n.to_string();
                number.as_str()
            }
            _ => return false,
        };
        match self.kind {
            MatchKind::Exact => self.value == text,
            MatchKind::Glob => glob_match(&self.value, text),
        }
    }

    /// Whether this condition alone pins a stable subject (see [`validate_conditions`]).
    fn pins_stable_subject(&self) -> bool {
        if !STABLE_SUBJECT_CLAIMS.contains(&self.claim.as_str()) {
            return false;
        }
        match self.kind {
            MatchKind::Exact => true,
            MatchKind::Glob => {
                let literal = self.value.split(['*', '?']).next().unwrap_or_default();
                literal.contains('/')
            }
        }
    }
}

/// The first condition the claims fail, if any (all must hold).
pub fn first_failing<'a>(
    conditions: &'a [ClaimCondition],
    claims: &Map<String, Value>,
) -> Option<&'a ClaimCondition> {
    conditions.iter().find(|c| !c.matches(claims))
}

/// Checks a policy's conditions: 1..=32 of them; claim names 1..=100 characters without
/// whitespace; values 1..=1000 characters; and at least one pins a stable subject (an exact
/// match on one of [`STABLE_SUBJECT_CLAIMS`], or a glob on one whose literal text before the
/// first wildcard contains a `/`), so that a policy cannot end up trusting whoever names a
/// new repository or project like an old one. The message says what is wrong.
pub fn validate_conditions(conditions: &[ClaimCondition]) -> Result<(), String> {
    if conditions.is_empty() {
        return Err(format!(
            "at least one condition is required; {STABLE_SUBJECT_MESSAGE}"
        ));
    }
    if conditions.len() > MAX_CONDITIONS {
        return Err(format!(
            "at most {MAX_CONDITIONS} conditions are allowed, not {}",
            conditions.len()
        ));
    }
    for condition in conditions {
        let name_chars = condition.claim.chars().count();
        if name_chars == 0 {
            return Err("a condition's claim name must not be empty".to_owned());
        }
        if name_chars > MAX_CLAIM_NAME_CHARS {
            return Err(format!(
                "the claim name {:?} is longer than {MAX_CLAIM_NAME_CHARS} characters",
                shorten(&condition.claim)
            ));
        }
        if condition.claim.chars().any(char::is_whitespace) {
            return Err(format!(
                "the claim name {:?} contains whitespace",
                condition.claim
            ));
        }
        let value_chars = condition.value.chars().count();
        if value_chars == 0 {
            return Err(format!(
                "the condition on the claim {} has an empty value",
                condition.claim
            ));
        }
        if value_chars > MAX_VALUE_CHARS {
            return Err(format!(
                "the value of the condition on the claim {} is longer than {MAX_VALUE_CHARS} \
                 characters",
                condition.claim
            ));
        }
    }
    if !conditions.iter().any(ClaimCondition::pins_stable_subject) {
        return Err(STABLE_SUBJECT_MESSAGE.to_owned());
    }
    Ok(())
}

/// The first 40 characters, for messages about overlong input.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// The obvious dynamic-programming matcher, as the reference.
    fn reference(pattern: &str, text: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        // m[j]: whether p[..i] matches t[..j], row by row.
        let mut m = vec![false; t.len() + 1];
        m[0] = true;
        for &pc in &p {
            let mut next = vec![false; t.len() + 1];
            if pc == '*' {
                next[0] = m[0];
            }
            for j in 1..=t.len() {
                next[j] = match pc {
                    '*' => m[j] || next[j - 1],
                    '?' => m[j - 1],
                    c => m[j - 1] && c == t[j - 1],
                };
            }
            m = next;
        }
        m[t.len()]
    }

    fn cond(claim: &str, kind: MatchKind, value: &str) -> ClaimCondition {
        ClaimCondition {
            claim: claim.into(),
            kind,
            value: value.into(),
        }
    }

    #[test]
    fn glob_cases() {
        let yes = [
            ("", ""),
            ("*", ""),
            ("*", "anything/at:all"),
            ("repo:acme/*", "repo:acme/app:ref:refs/heads/main"),
            ("refs/heads/release/*", "refs/heads/release/1.2"),
            ("a?c", "abc"),
            ("a?c", "aéc"),
            ("*a*b*c*", "xxaxxbxxcxx"),
            ("**", "x"),
            ("a*", "a"),
            (
                "*.yml@refs/heads/main",
                "acme/app/.github/workflows/ci.yml@refs/heads/main",
            ),
        ];
        for (p, t) in yes {
            assert!(glob_match(p, t), "{p:?} should match {t:?}");
        }
        let no = [
            ("", "a"),
            ("a", ""),
            ("?", ""),
            ("a?c", "ac"),
            ("a?c", "abbc"),
            ("repo:acme/*", "repo:ACME/app"),
            ("repo:acme/*", "repo:acme-evil/app"),
            ("abc", "abcd"),
            ("*a", "ab"),
        ];
        for (p, t) in no {
            assert!(!glob_match(p, t), "{p:?} should not match {t:?}");
        }
        // No exponential blow-up.
        let text = "a".repeat(5000);
        assert!(!glob_match(&format!("{}b", "a*".repeat(500)), &text));
    }

    proptest! {
        #[test]
        fn glob_agrees_with_reference(p in "[ab?*é]{0,12}", t in "[abé]{0,16}") {
            prop_assert_eq!(glob_match(&p, &t), reference(&p, &t));
        }

        #[test]
        fn glob_agrees_on_any_text(p in "\\PC{0,10}", t in "\\PC{0,20}") {
            prop_assert_eq!(glob_match(&p, &t), reference(&p, &t));
        }
    }

    #[test]
    fn conditions_match_strings_and_numbers_only() {
        let Value::Object(claims) = json!({
            "sub": "repo:acme/app:ref:refs/heads/main",
            "repository_id": 123,
            "list": ["a"],
            "flag": true,
        }) else {
            unreachable!()
        };
        assert!(cond("sub", MatchKind::Glob, "repo:acme/*").matches(&claims));
        assert!(cond("repository_id", MatchKind::Exact, "123").matches(&claims));
        assert!(cond("repository_id", MatchKind::Glob, "12*").matches(&claims));
        assert!(!cond("list", MatchKind::Glob, "*").matches(&claims));
        assert!(!cond("flag", MatchKind::Exact, "true").matches(&claims));
        assert!(!cond("missing", MatchKind::Glob, "*").matches(&claims));
        let conds = [
            cond("sub", MatchKind::Glob, "repo:acme/*"),
            cond("repository_id", MatchKind::Exact, "124"),
        ];
        assert_eq!(first_failing(&conds, &claims), Some(&conds[1]));
        assert_eq!(first_failing(&conds[..1], &claims), None);
    }

    #[test]
    fn serde_spelling() -> Result<(), serde_json::Error> {
        let c: ClaimCondition =
            serde_json::from_str(r#"{"claim":"sub","match":"glob","value":"repo:a/*"}"#)?;
        assert_eq!(c, cond("sub", MatchKind::Glob, "repo:a/*"));
        assert_eq!(
            serde_json::to_string(&cond("ref", MatchKind::Exact, "x"))?,
            r#"{"claim":"ref","match":"exact","value":"x"}"#
        );
        Ok(())
    }

    #[test]
    fn validation() {
        let ok = |conds: &[ClaimCondition]| validate_conditions(conds).is_ok();
        assert!(ok(&[cond(
            "sub",
            MatchKind::Exact,
            "repo:acme/app:ref:refs/heads/main"
        )]));
        assert!(ok(&[cond("sub", MatchKind::Glob, "repo:acme/*")]));
        assert!(ok(&[
            cond("repository_owner_id", MatchKind::Exact, "42"),
            cond("ref", MatchKind::Glob, "*"),
        ]));
        assert!(ok(&[cond("project_id", MatchKind::Exact, "7")]));
        // Stable subject rule.
        for conds in [
            vec![cond("sub", MatchKind::Glob, "repo:*")],
            vec![cond("sub", MatchKind::Glob, "repo:acme?/x")],
            vec![cond("repository", MatchKind::Exact, "acme/app")],
            vec![cond("ref", MatchKind::Exact, "refs/heads/main")],
        ] {
            assert_eq!(
                validate_conditions(&conds),
                Err(STABLE_SUBJECT_MESSAGE.to_owned())
            );
        }
        let sub = cond("sub", MatchKind::Exact, "x");
        assert!(validate_conditions(&[]).is_err_and(|m| m.contains("at least one condition")));
        assert!(validate_conditions(&vec![sub.clone(); 33]).is_err_and(|m| m.contains("32")));
        assert!(ok(&vec![sub.clone(); 32]));
        let bad = [
            cond("", MatchKind::Exact, "x"),
            cond("a b", MatchKind::Exact, "x"),
            cond(&"c".repeat(101), MatchKind::Exact, "x"),
            cond("ref", MatchKind::Exact, ""),
            cond("ref", MatchKind::Exact, &"v".repeat(1001)),
        ];
        for b in bad {
            assert!(
                validate_conditions(&[sub.clone(), b.clone()]).is_err(),
                "{b:?}"
            );
        }
        assert!(ok(&[
            sub.clone(),
            cond(&"é".repeat(100), MatchKind::Exact, &"é".repeat(1000))
        ]));
    }
}
