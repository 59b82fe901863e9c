//! The environment variables the official client reads, with its rule that an empty value
//! counts as unset.

pub const PRISMATIC_URL: &str = "PRISMATIC_URL";
pub const PRISM_ACCESS_TOKEN: &str = "PRISM_ACCESS_TOKEN";
pub const PRISM_REFRESH_TOKEN: &str = "PRISM_REFRESH_TOKEN";
/// An OIDC token for `me:token` to exchange (keyless CI).
pub const PRISM_OIDC_TOKEN: &str = "PRISM_OIDC_TOKEN";
pub const PRISM_PROFILE: &str = "PRISM_PROFILE";
pub const PRISM_CONFIG_FILE: &str = "PRISM_CONFIG_FILE";
pub const PRISMATIC_TENANT_ID: &str = "PRISMATIC_TENANT_ID";
pub const PRISMATIC_PRINT_REQUESTS: &str = "PRISMATIC_PRINT_REQUESTS";
pub const PRISM_QUIET: &str = "PRISM_QUIET";
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";
pub const NODE_EXTRA_CA_CERTS: &str = "NODE_EXTRA_CA_CERTS";

/// The default API URL when `PRISMATIC_URL` is unset.
pub const DEFAULT_URL: &str = "https://app.prismatic.io";

/// The value of `name`, or `None` when it is unset, empty or not UTF-8.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Whether a boolean-ish variable is set to something other than `false`/`0`.
pub fn flag(name: &str) -> bool {
    var(name).is_some_and(|v| v != "false" && v != "0")
}
