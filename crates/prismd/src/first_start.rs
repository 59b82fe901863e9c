//! The first start on an empty database: create the organization and its Owner with a
//! generated password, and hand the password to the operator in a 0600 file, never in the log.
//!
//! The password is on disk (under a `.pending` name) before the Owner is committed, so no
//! crash can leave an Owner whose password nobody has: a start that finds the organization and
//! a pending file finishes the hand-over.
//!
//! Once the Owner has a password of their own, the file goes ([`retire_password_file`]): a
//! plaintext password should not stay on disk for the life of the install.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::watch;

use crate::ServeError;
use crate::domain::accounts::{Accounts, normalize_email};
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

/// How close to the password file's writing the Owner it belongs to was created: the first
/// start writes the file, then commits the Owner, within moments.
const FIRST_START_WINDOW_MS: i64 = 60_000;

/// Whether the generated password in the file still signs in the identity `email` (false
/// without a file, an identity or a password).
pub async fn file_password_matches(
    store: &dyn Store,
    data_dir: &Path,
    email: &str,
) -> Result<bool, ServeError> {
    let (Some((password, _)), Some((_, hash))) =
        (read_file(data_dir)?, credentials_of(store, email).await?)
    else {
        return Ok(false);
    };
    Ok(passwords::verify(password, hash).await?)
}

/// The password in the file and when the file was written; `None` without a file.
fn read_file(data_dir: &Path) -> Result<Option<(String, i64)>, ServeError> {
    let path = data_dir.join(INITIAL_PASSWORD_FILE);
    let read = std::fs::read_to_string(&path).and_then(|text| {
        let written = std::fs::metadata(&path)?.modified()?;
        Ok((text, written))
    });
    match read {
        Ok((text, written)) => {
            let written_ms = written
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            Ok(Some((text.trim().to_owned(), written_ms)))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// The identity `email` with its password hash, when it has both.
async fn credentials_of(
    store: &dyn Store,
    email: &str,
) -> Result<Option<(crate::store::Identity, String)>, ServeError> {
    let Ok(email) = normalize_email(email) else {
        return Ok(None);
    };
    Ok(store
        .identity_by_email(&email)
        .await?
        .and_then(|c| c.password_hash.map(|hash| (c.identity, hash))))
}

/// Removes the password file, and says so in the log.
pub fn remove_password_file(data_dir: &Path) -> Result<(), ServeError> {
    let path = data_dir.join(INITIAL_PASSWORD_FILE);
    std::fs::remove_file(&path)?;
    tracing::info!(
        password_file = %path.display(),
        "the first Owner has set a password of their own: removed the file of the generated one"
    );
    Ok(())
}

/// Removes the password file once the first Owner (`owner_email`, created with the file) has
/// a password of their own: the file's no longer signs them in. Anything it cannot tell (no
/// file, no such identity, an identity made well after the file, no password) keeps the
/// file. Returns whether it removed it.
pub async fn retire_password_file(
    store: &dyn Store,
    data_dir: &Path,
    owner_email: &str,
) -> Result<bool, ServeError> {
    let Some((password, written_ms)) = read_file(data_dir)? else {
        return Ok(false);
    };
    // One read of the Owner: made with the file, and with a password of their own.
    let Some((identity, hash)) = credentials_of(store, owner_email).await? else {
        return Ok(false);
    };
    if (identity.created_at - written_ms).abs() > FIRST_START_WINDOW_MS
        || passwords::verify(password, hash).await?
    {
        return Ok(false);
    }
    remove_password_file(data_dir)?;
    Ok(true)
}

/// [`retire_password_file`] every `interval` until the file is gone (or the server stops): an
/// Owner may set their password on any replica, through the browser or a reset link.
pub async fn retire_periodically(
    store: Arc<dyn Store>,
    data_dir: PathBuf,
    owner_email: String,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        if !data_dir.join(INITIAL_PASSWORD_FILE).exists() {
            return;
        }
        if let Err(err) = retire_password_file(store.as_ref(), &data_dir, &owner_email).await {
            tracing::warn!(error = %err, "could not check the first Owner's password file");
        }
    }
}
