//! The config file (`~/.config/prism/config.yml`, or `PRISM_CONFIG_FILE`) in the official
//! client's YAML layout (and its older flat one): read leniently, written atomically (temp
//! file, fsync, rename) with mode 0600 in a 0700 directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::env;
use crate::error::{Error, Result};

/// One saved login, with the official client's field names and order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(default, deserialize_with = "lenient")]
    pub access_token: String,
    #[serde(default, deserialize_with = "lenient")]
    pub expires_in: u64,
    #[serde(default, deserialize_with = "lenient")]
    pub refresh_token: String,
    #[serde(default, deserialize_with = "lenient")]
    pub scope: String,
    #[serde(default, deserialize_with = "lenient")]
    pub token_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prismatic_url: Option<String>,
}

/// A missing or `null` value (`accessToken:` with nothing after it) reads as empty.
fn lenient<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The whole file: `version`, `defaultProfile`, `profiles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    #[serde(default = "version_one")]
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_profile: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

fn version_one() -> u32 {
    1
}

impl Default for Config {
    fn default() -> Self {
        Self {
            version: 1,
            default_profile: None,
            profiles: BTreeMap::new(),
        }
    }
}

/// The profile name used when neither `--profile`, `PRISM_PROFILE` nor `defaultProfile` says.
pub const DEFAULT_PROFILE: &str = "default";

/// Where the config file lives: `PRISM_CONFIG_FILE`, else `~/.config/prism/config.yml`.
pub fn path() -> Result<PathBuf> {
    if let Some(file) = env::var(env::PRISM_CONFIG_FILE) {
        return Ok(PathBuf::from(file));
    }
    let home = env::var("HOME").ok_or_else(|| {
        Error::new("HOME is not set, so the config file cannot be found: set PRISM_CONFIG_FILE.")
    })?;
    Ok(Path::new(&home).join(".config/prism/config.yml"))
}

impl Config {
    /// The profile a command uses: `--profile`/`PRISM_PROFILE`, else `defaultProfile`, else
    /// `default`.
    pub fn selected_name(&self, requested: Option<&str>) -> String {
        requested
            .map(str::to_owned)
            .or_else(|| self.default_profile.clone())
            .unwrap_or_else(|| DEFAULT_PROFILE.to_owned())
    }

    /// Parses either layout. An empty file is an empty config.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let value: serde_norway::Value = serde_norway::from_str(text).map_err(|e| {
            Error::new(format!(
                "{} is not valid YAML ({e}); fix or delete it, then run 'prism login'.",
                origin.display()
            ))
        })?;
        let invalid = |e: serde_norway::Error| {
            Error::new(format!(
                "{} is not a prism config file ({e}); fix or delete it, then run 'prism login'.",
                origin.display()
            ))
        };
        let Some(map) = value.as_mapping() else {
            if value.is_null() {
                return Ok(Self::default());
            }
            return Err(Error::new(format!(
                "{} is not a prism config file (expected a mapping); fix or delete it.",
                origin.display()
            )));
        };
        let flat = map.contains_key("accessToken") || map.contains_key("refreshToken");
        if flat && !map.contains_key("profiles") {
            let profile: Profile = serde_norway::from_value(value).map_err(invalid)?;
            let mut config = Self::default();
            config.profiles.insert(DEFAULT_PROFILE.to_owned(), profile);
            return Ok(config);
        }
        serde_norway::from_value(value).map_err(invalid)
    }

    pub fn to_yaml(&self) -> Result<String> {
        serde_norway::to_string(self)
            .map_err(|e| Error::new(format!("cannot encode the config file: {e}")))
    }
}

/// Reads the config file; `None` when it does not exist. Warns on stderr when the file is
/// readable by group or others (it holds refresh tokens).
pub fn load(path: &Path) -> Result<Option<Config>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::new(format!(
                "cannot read the config file {}: {e}",
                path.display()
            )));
        }
    };
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "Warning: {} holds your tokens and is readable by other users (mode {mode:o}); \
                 run 'chmod 600 {}'.",
                path.display(),
                path.display()
            );
        }
    }
    Config::parse(&text, path).map(Some)
}

/// Writes `config` atomically with mode 0600 (its directory 0700 when created); deleting the
/// last profile deletes the file, as the official client does.
pub fn save(path: &Path, config: &Config) -> Result<()> {
    if config.profiles.is_empty() {
        return match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::new(format!("cannot delete {}: {e}", path.display()))),
        };
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let io_error = |what: &str, e: std::io::Error| {
        Error::new(format!(
            "cannot write the config file {} ({what}: {e}); check the directory's permissions.",
            path.display()
        ))
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_error("creating the directory", e))?;
    }
    let yaml = config.to_yaml()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.yml".to_owned());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(yaml.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(io_error("writing", e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_flat_layout_as_default() -> Result<()> {
        let text =
            "accessToken: a.b.c\nexpiresIn: 10\nrefreshToken: r\nscope: s\ntokenType: Bearer\n";
        let config = Config::parse(text, Path::new("x"))?;
        let profile = config
            .profiles
            .get("default")
            .ok_or_else(|| Error::new("no default"))?;
        assert_eq!(profile.refresh_token, "r");
        assert_eq!(profile.expires_in, 10);
        Ok(())
    }

    #[test]
    fn round_trips_the_official_layout() -> Result<()> {
        let text = "version: 1\ndefaultProfile: work\nprofiles:\n  work:\n    accessToken: a.b.c\n    expiresIn: 604800\n    refreshToken: prism_rt_x\n    scope: openid profile email offline_access\n    tokenType: Bearer\n    tenantId: t1\n    prismaticUrl: https://example.com\n";
        let config = Config::parse(text, Path::new("x"))?;
        assert_eq!(config.default_profile.as_deref(), Some("work"));
        assert_eq!(config.to_yaml()?, text);
        Ok(())
    }

    #[test]
    fn empty_file_is_empty_config() -> Result<()> {
        assert_eq!(Config::parse("", Path::new("x"))?, Config::default());
        Ok(())
    }
}
