//! End-to-end tests of the `prism` binary against real `prismd` processes over development TLS.

mod harness;
mod keyless;
mod login;
mod modes;
mod resource_servers;
mod sessions;
mod tenants;
mod tokens;
mod users;
