//! The OAuth clients this server knows: one, the official `prism` CLI (a public client), and
//! the scopes it may ask for. Browser login, the device grant and minted refresh tokens all
//! name it, so it lives apart from each of them.

/// The public OAuth client of the `prism` CLI; refresh tokens minted by operators belong to it
/// too, so the official client can use them.
pub const CLI_CLIENT_ID: &str = "prism-cli";
/// Scope of refresh tokens minted for the CLI and for CI.
pub const DEFAULT_SCOPE: &str = "openid profile email offline_access";

/// Whether every scope in the space-separated `scope` is one of [`DEFAULT_SCOPE`]'s.
pub fn known_scope(scope: &str) -> bool {
    let known: Vec<&str> = DEFAULT_SCOPE.split(' ').collect();
    scope.split_whitespace().all(|s| known.contains(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_default_scopes_are_known() {
        assert!(known_scope(DEFAULT_SCOPE));
        assert!(known_scope("openid  email"));
        assert!(known_scope(""));
        assert!(!known_scope("openid admin"));
    }
}
