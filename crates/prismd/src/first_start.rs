//! The first start on an empty database: create the organization and its Owner with a
//! generated password, and hand the password to the operator in a 0600 file, never in the log.
//!
//! The password is on disk (under a `.pending` name) before the Owner is committed, so no
//! crash can leave an Owner whose password nobody has: a start that finds the organization and
//! a pending file finishes the hand-over.

use std::path::Path;

use crate::ServeError;
use crate::domain::accounts::Accounts;
use crate::domain::{passwords, secrets};
use crate::files::write_private;
use crate::store::Store;

/// Name of the file, in the data directory, that holds the first Owner's generated password.
pub const INITIAL_PASSWORD_FILE: &str = "initial-owner-password";

/// Creates the organization and Owner unless an organization exists.
pub async fn ensure(
    store: &dyn Store,
    data_dir: &Path,
    org_name: &str,
    owner_email: &str,
) -> Result<(), ServeError> {
    let final_path = data_dir.join(INITIAL_PASSWORD_FILE);
    let pending_path = data_dir.join(format!("{INITIAL_PASSWORD_FILE}.pending"));
    if store.default_organization().await?.is_some() {
        if pending_path.exists() {
            if final_path.exists() {
                std::fs::remove_file(&pending_path)?;
            } else {
                // The last first start committed the Owner but stopped before this rename.
                std::fs::rename(&pending_path, &final_path)?;
                tracing::info!(password_file = %final_path.display(), "finished the first-start hand-over");
            }
        }
        return Ok(());
    }

    let password = secrets::generate_initial_password()?;
    write_private(&pending_path, format!("{password}\n").as_bytes())?;
    let password_hash = passwords::hash(password).await?;
    let created = Accounts::new(store)
        .bootstrap(org_name, owner_email, password_hash)
        .await
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&pending_path);
        })?;
    let Some(created) = created else {
        // Another process created the organization between our check and our write.
        std::fs::remove_file(&pending_path)?;
        return Ok(());
    };
    std::fs::rename(&pending_path, &final_path)?;
    tracing::info!(
        org = %created.org.name,
        tenant_id = %created.org.tenant_id,
        owner = %created.owner_email,
        password_file = %final_path.display(),
        "first start: created the organization and its Owner; the Owner's generated password is \
         in the password file (readable only by this account). Mint a refresh token for CI with: \
         prismd --data-dir {} tokens create --email {}",
        data_dir.display(),
        created.owner_email,
    );
    Ok(())
}
