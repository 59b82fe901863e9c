//! Where the data lives: the backend and file or server chosen by `--database-url`, and the
//! connection settings for either.

use std::path::{Path, PathBuf};

use super::{CacheSettings, DATABASE_FILE, PgPoolSettings, StoreError};

/// Where the data lives, decided from `--database-url` (or its absence).
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded database: this file.
    Sqlite(PathBuf),
    /// A PostgreSQL server, by connection URL.
    Postgres(String),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Backend {
    /// `sqlite:<file>` (also `sqlite://<file>`) or no URL: SQLite, by default
    /// `<data_dir>/prismd.db`. `postgres://` or `postgresql://`: PostgreSQL.
    pub fn from_url(url: Option<&str>, data_dir: &Path) -> Result<Self, StoreError> {
        let url = url.map(str::trim).filter(|u| !u.is_empty());
        let Some(url) = url else {
            return Ok(Self::Sqlite(data_dir.join(DATABASE_FILE)));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            // sqlx-style options (`?mode=rwc`) would silently become part of the file name.
            if path.contains('?') {
                return Err(StoreError::UnsupportedUrl(
                    "sqlite with ?options (not supported)".into(),
                ));
            }
            return Ok(Self::Sqlite(if path.is_empty() {
                data_dir.join(DATABASE_FILE)
            } else {
                PathBuf::from(path)
            }));
        }
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        Err(StoreError::UnsupportedUrl(
            scheme.chars().take(20).collect(),
        ))
    }

    /// For logs: the SQLite file, or PostgreSQL host, port and database, never the password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite {}", path.display()),
            Self::Postgres(url) => match url::Url::parse(url) {
                Ok(parsed) => format!(
                    "postgres {}:{}{}",
                    parsed.host_str().unwrap_or("(socket)"),
                    parsed.port().unwrap_or(5432),
                    parsed.path()
                ),
                Err(_) => "postgres".to_owned(),
            },
        }
    }
}

/// Connection settings for either backend.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// SQLite read connections.
    pub sqlite_readers: u32,
    /// PostgreSQL pool.
    pub postgres: PgPoolSettings,
    /// The standing cache in front of the hot-path reads (a zero lifetime turns it off).
    pub cache: CacheSettings,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            sqlite_readers: 8,
            postgres: PgPoolSettings::default(),
            cache: CacheSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_url() -> Result<(), StoreError> {
        let dir = Path::new("/srv/prism");
        assert_eq!(
            Backend::from_url(None, dir)?,
            Backend::Sqlite(dir.join(DATABASE_FILE))
        );
        assert_eq!(
            Backend::from_url(Some("sqlite:"), dir)?,
            Backend::Sqlite(dir.join(DATABASE_FILE))
        );
        assert_eq!(
            Backend::from_url(Some("sqlite:///var/lib/p.db"), dir)?,
            Backend::Sqlite(PathBuf::from("/var/lib/p.db"))
        );
        assert_eq!(
            Backend::from_url(Some("sqlite:rel.db"), dir)?,
            Backend::Sqlite(PathBuf::from("rel.db"))
        );
        let pg = Backend::from_url(Some("postgres://u:secret@db:6543/prism"), dir)?;
        assert_eq!(pg.describe(), "postgres db:6543/prism");
        assert!(!format!("{pg:?}").contains("secret"));
        assert!(matches!(
            Backend::from_url(Some("mysql://u:secret@h/db"), dir),
            Err(StoreError::UnsupportedUrl(s)) if s == "mysql"
        ));
        Ok(())
    }
}
