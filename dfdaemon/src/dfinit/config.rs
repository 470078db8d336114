//! Planning the edit of containerd's `config.toml` (pure): its version, the CRI plugin's
//! registry section, `config_path`, and what cannot be combined with it.

use super::*;

/// containerd config version, from the top-level `version` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigVersion {
    /// No `version` key (or `version = 0`): containerd reads the file as version 1.
    Unversioned,
    /// `version = 1`: short plugin names (`[plugins.cri]`).
    V1,
    /// `version = 2`: `[plugins."io.containerd.grpc.v1.cri"]` (containerd 1.x and 2.x).
    V2,
    /// `version = 3` or later: `[plugins."io.containerd.cri.v1.images"]` (containerd 2.x).
    V3(i64),
}

impl fmt::Display for ConfigVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unversioned => f.write_str("1 (no `version` key)"),
            Self::V1 => f.write_str("1"),
            Self::V2 => f.write_str("2"),
            Self::V3(n) => write!(f, "{n}"),
        }
    }
}

/// How `config_path` stood in `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigPathStatus {
    /// Already set; dfinit leaves `config.toml` alone.
    AlreadySet,
    /// Missing; dfinit adds it.
    Added,
    /// Present but empty (`config_path = ""`, as `containerd config default` writes); dfinit sets it.
    WasEmpty,
}

/// Something the operator should know. [`Notice::is_warning`] tells whether it needs action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// No `version` key: containerd treats the file as version 1.
    Unversioned { section: String },
    /// A version 1 config that configures the CRI plugin under its version 2 id, which
    /// containerd 1.6 and older ignore in a version 1 file.
    V1WithLongPluginId { section: String },
    /// `version` is newer than dfinit knows.
    NewerVersion { version: i64, section: String },
    /// A `registry` section under a plugin id this config version does not use.
    RegistryUnderOtherPlugin { found: String, used: String },
    /// `config_path` is set together with legacy keys containerd refuses alongside it.
    LegacyRegistryConfig { keys: Vec<String> },
    /// `imports` may override the CRI section.
    Imports {
        imports: Vec<String>,
        section: String,
    },
    /// `config_path` lists several directories; dfinit writes to the first.
    SeveralConfigPaths { value: String, used: PathBuf },
    /// `--config-path` was given but `config.toml` already names another directory.
    ConfigPathFlagIgnored {
        requested: PathBuf,
        existing: PathBuf,
    },
    /// A `hosts.toml` not written by dfinit was replaced (its previous content is in `backup`).
    ReplacedUnmanagedHosts { path: PathBuf, backup: PathBuf },
    /// An earlier backup exists with different content; a new numbered backup was used.
    EarlierBackupKept { earlier: PathBuf, new: PathBuf },
    /// `_default/hosts.toml` from an earlier `--all-registries` run is still in place.
    StaleDefaultHosts { path: PathBuf },
}

impl Notice {
    /// `true` for problems the operator should fix; `false` for information.
    pub fn is_warning(&self) -> bool {
        !matches!(
            self,
            Self::Unversioned { .. }
                | Self::SeveralConfigPaths { .. }
                | Self::ConfigPathFlagIgnored { .. }
                | Self::StaleDefaultHosts { .. }
        )
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unversioned { section } => write!(
                f,
                "config has no `version` key, so containerd reads it as config version 1; using \
                 {section} (containerd 1.6 reads only the short plugin name from a version 1 file, \
                 1.7+ migrate it)"
            ),
            Self::V1WithLongPluginId { section } => write!(
                f,
                "this version 1 config configures the CRI plugin as {section}; containerd 1.6 and \
                 older ignore that name in a version 1 file (they read [plugins.cri]). Consider \
                 migrating the file to `version = 2` (`containerd config migrate` on 1.7+)"
            ),
            Self::NewerVersion { version, section } => write!(
                f,
                "config version {version} is newer than dfinit knows (3); assuming the CRI registry \
                 settings are still in {section}"
            ),
            Self::RegistryUnderOtherPlugin { found, used } => write!(
                f,
                "{found} is present but containerd does not read it for this config version; dfinit \
                 uses {used}"
            ),
            Self::LegacyRegistryConfig { keys } => write!(
                f,
                "{} set together with config_path: containerd does not load the CRI plugin with \
                 this combination (\"`mirrors` cannot be set when `config_path` is provided\"). \
                 Move these entries to hosts.toml files and remove them from config.toml",
                keys.join(", ")
            ),
            Self::Imports { imports, section } => write!(
                f,
                "config.toml imports {}; a {section} section in an imported file replaces this \
                 file's, so check that config_path is set there too",
                imports.join(", ")
            ),
            Self::SeveralConfigPaths { value, used } => write!(
                f,
                "config_path = \"{value}\" lists several directories; dfinit writes to the first, {}",
                used.display()
            ),
            Self::ConfigPathFlagIgnored {
                requested,
                existing,
            } => write!(
                f,
                "--config-path {} ignored: config.toml already sets config_path to {}",
                requested.display(),
                existing.display()
            ),
            Self::ReplacedUnmanagedHosts { path, backup } => write!(
                f,
                "{} was not written by dfinit; its previous content is in {}",
                path.display(),
                backup.display()
            ),
            Self::EarlierBackupKept { earlier, new } => write!(
                f,
                "{} holds an earlier, different original and was kept; the current original is \
                 saved as {}",
                earlier.display(),
                new.display()
            ),
            Self::StaleDefaultHosts { path } => write!(
                f,
                "{} from an earlier --all-registries run is still in place, so every registry \
                 still goes through the mirror; delete it to stop that",
                path.display()
            ),
        }
    }
}

/// What `config.toml` says and what dfinit must change in it.
#[derive(Debug, Clone)]
pub struct ConfigPlan {
    /// The config version.
    pub version: ConfigVersion,
    /// The table key under `[plugins]` holding the CRI registry settings.
    pub plugin_id: String,
    /// The directory `hosts.toml` files go into (absolute).
    pub config_path: PathBuf,
    /// Whether `config_path` was already set.
    pub config_path_status: ConfigPathStatus,
    /// The new `config.toml` text, if it must change.
    pub new_contents: Option<String>,
    /// Things the operator should know.
    pub notices: Vec<Notice>,
}

/// `[plugins."<id>".registry]` as written in a TOML header.
pub(super) fn section_name(plugin_id: &str, sub: &[&str]) -> String {
    let mut parts = vec!["plugins".to_string(), toml_key(plugin_id)];
    parts.extend(sub.iter().map(|s| toml_key(s)));
    format!("[{}]", parts.join("."))
}

pub(super) fn dotted_key(plugin_id: &str, sub: &[&str]) -> String {
    let name = section_name(plugin_id, sub);
    name[1..name.len() - 1].to_string()
}

pub(super) fn toml_key(key: &str) -> String {
    toml_edit::Key::new(key).display_repr().into_owned()
}

/// Looks up `key` in `parent`, failing if it exists but is not a table.
pub(super) fn child<'a>(
    parent: &'a dyn TableLike,
    key: &str,
    full_key: impl FnOnce() -> String,
    path: &Path,
) -> Result<Option<&'a dyn TableLike>, DfinitError> {
    match parent.get(key) {
        None => Ok(None),
        Some(item) => item
            .as_table_like()
            .map(Some)
            .ok_or_else(|| DfinitError::NotATable {
                path: path.to_path_buf(),
                key: full_key(),
            }),
    }
}

pub(super) fn registry_section<'a>(
    plugins: Option<&'a dyn TableLike>,
    plugin_id: &str,
    path: &Path,
) -> Result<Option<&'a dyn TableLike>, DfinitError> {
    let Some(plugins) = plugins else {
        return Ok(None);
    };
    let Some(plugin) = child(plugins, plugin_id, || dotted_key(plugin_id, &[]), path)? else {
        return Ok(None);
    };
    child(
        plugin,
        "registry",
        || dotted_key(plugin_id, &["registry"]),
        path,
    )
}

/// Keys under `registry` that containerd refuses next to `config_path`: any `mirrors` entry and
/// any `configs.<host>.tls`.
pub(super) fn legacy_registry_keys(registry: &dyn TableLike, plugin_id: &str) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(mirrors) = registry.get("mirrors").and_then(Item::as_table_like) {
        for (host, _) in mirrors.iter() {
            keys.push(dotted_key(plugin_id, &["registry", "mirrors", host]));
        }
    }
    if let Some(configs) = registry.get("configs").and_then(Item::as_table_like) {
        for (host, config) in configs.iter() {
            if config
                .as_table_like()
                .is_some_and(|c| c.contains_key("tls"))
            {
                keys.push(dotted_key(plugin_id, &["registry", "configs", host, "tls"]));
            }
        }
    }
    keys
}

/// The whitespace a line starts with, from a decor prefix (which may hold blank lines and
/// comments before it).
pub(super) fn indent_of(prefix: Option<&RawString>) -> String {
    let text = prefix.and_then(RawString::as_str).unwrap_or_default();
    let last_line = text.rsplit('\n').next().unwrap_or_default();
    if last_line.chars().all(|c| c == ' ' || c == '\t') {
        last_line.to_string()
    } else {
        String::new()
    }
}

/// Makes sure `parent[key]` is a table and returns it, creating it (as a header table, or inline
/// when `parent` is inline) if missing.
pub(super) fn ensure_table<'a>(
    parent: &'a mut Item,
    key: &str,
    implicit: bool,
    full_key: &str,
    path: &Path,
) -> Result<&'a mut Item, DfinitError> {
    let not_a_table = || DfinitError::NotATable {
        path: path.to_path_buf(),
        key: full_key.to_string(),
    };
    let parent_inline = parent.is_inline_table();
    let parent_indent = match &*parent {
        Item::Table(t) if !t.is_dotted() => Some(indent_of(t.decor().prefix())),
        _ => None,
    };
    let table = parent.as_table_like_mut().ok_or_else(not_a_table)?;
    if table.get(key).is_none() {
        let new = if parent_inline {
            Item::Value(Value::InlineTable(InlineTable::new()))
        } else {
            let mut t = Table::new();
            t.set_implicit(implicit);
            if let Some(indent) = parent_indent.filter(|i| !i.is_empty()) {
                t.decor_mut().set_prefix(format!("\n{indent}  "));
            }
            Item::Table(t)
        };
        table.insert(key, new);
    }
    match table.get_mut(key) {
        Some(item) if item.is_table_like() => Ok(item),
        _ => Err(not_a_table()),
    }
}

/// Sets `registry.config_path` in the document, keeping the formatting around it.
pub(super) fn set_config_path(
    doc: &mut DocumentMut,
    plugin_id: &str,
    config_path: &str,
    path: &Path,
) -> Result<(), DfinitError> {
    let root = doc.as_item_mut();
    let plugins = ensure_table(root, "plugins", true, "plugins", path)?;
    let plugin = ensure_table(plugins, plugin_id, true, &dotted_key(plugin_id, &[]), path)?;
    let registry = ensure_table(
        plugin,
        "registry",
        false,
        &dotted_key(plugin_id, &["registry"]),
        path,
    )?;
    // Indentation for a new key: like its siblings, else two spaces under an indented header.
    let indent = match &*registry {
        Item::Table(t) if !t.is_dotted() => {
            let sibling = t
                .iter()
                .find(|(_, v)| v.is_value())
                .and_then(|(k, _)| t.key(k))
                .map(|k| indent_of(k.leaf_decor().prefix()));
            sibling.unwrap_or_else(|| {
                let header = indent_of(t.decor().prefix());
                if header.is_empty() {
                    header
                } else {
                    format!("{header}  ")
                }
            })
        }
        _ => String::new(),
    };
    if let Item::Table(t) = registry {
        // An implicit table (only sub-tables, no header) must get a header to hold the key.
        t.set_implicit(false);
    }
    let table = registry
        .as_table_like_mut()
        .ok_or_else(|| DfinitError::NotATable {
            path: path.to_path_buf(),
            key: dotted_key(plugin_id, &["registry"]),
        })?;
    match table.get_mut("config_path") {
        Some(item) => {
            // Replace the value, keep the comment after it.
            let decor = item.as_value().map(|v| v.decor().clone());
            let mut value = Value::from(config_path);
            if let Some(decor) = decor {
                *value.decor_mut() = decor;
            }
            *item = Item::Value(value);
        }
        None => {
            table.insert("config_path", toml_edit::value(config_path));
            if !indent.is_empty() {
                if let Some(mut key) = table.key_mut("config_path") {
                    key.leaf_decor_mut().set_prefix(indent);
                }
            }
        }
    }
    Ok(())
}

/// containerd's config text as an editable document; an error naming the file and position.
pub(super) fn parse_config(path: &Path, contents: &str) -> Result<DocumentMut, DfinitError> {
    contents.parse().map_err(|source| DfinitError::ParseConfig {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads containerd's `config.toml` text and decides where `hosts.toml` files go and whether
/// `config_path` must be added. Pure: `path` is only used in messages.
///
/// `requested_config_path` is `--config-path` (default [`DEFAULT_CONFIG_PATH`]); it is used only
/// when the config sets no `config_path`.
pub fn plan_containerd_config(
    path: &Path,
    contents: &str,
    requested_config_path: Option<&Path>,
) -> Result<ConfigPlan, DfinitError> {
    let mut doc = parse_config(path, contents)?;
    let mut notices = Vec::new();

    let version = match doc.get("version") {
        None => ConfigVersion::Unversioned,
        Some(item) => match item.as_integer() {
            Some(0) => ConfigVersion::Unversioned,
            Some(1) => ConfigVersion::V1,
            Some(2) => ConfigVersion::V2,
            Some(n) if n >= 3 => ConfigVersion::V3(n),
            _ => {
                return Err(DfinitError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    found: item.to_string().trim().to_string(),
                })
            }
        },
    };

    let plugins = child(doc.as_table(), "plugins", || "plugins".to_string(), path)?;
    let has_plugin = |id: &str| plugins.is_some_and(|p| p.contains_key(id));
    let plugin_id = match version {
        ConfigVersion::V3(_) => PLUGIN_CRI_IMAGES,
        ConfigVersion::V2 => PLUGIN_GRPC_CRI,
        ConfigVersion::Unversioned | ConfigVersion::V1 => {
            if !has_plugin(PLUGIN_CRI_V1) && has_plugin(PLUGIN_GRPC_CRI) {
                notices.push(Notice::V1WithLongPluginId {
                    section: section_name(PLUGIN_GRPC_CRI, &[]),
                });
                PLUGIN_GRPC_CRI
            } else {
                PLUGIN_CRI_V1
            }
        }
    };
    let section = section_name(plugin_id, &["registry"]);
    match version {
        ConfigVersion::Unversioned => notices.push(Notice::Unversioned {
            section: section.clone(),
        }),
        ConfigVersion::V3(n) if n > 3 => notices.push(Notice::NewerVersion {
            version: n,
            section: section.clone(),
        }),
        _ => {}
    }
    // A registry section under another CRI plugin name is ignored for this config version (or,
    // for the two names of a version 1 file on containerd 1.7+, competes with the one we use).
    for other in [PLUGIN_CRI_V1, PLUGIN_GRPC_CRI, PLUGIN_CRI_IMAGES] {
        if other != plugin_id && matches!(registry_section(plugins, other, path), Ok(Some(_))) {
            notices.push(Notice::RegistryUnderOtherPlugin {
                found: section_name(other, &["registry"]),
                used: section.clone(),
            });
        }
    }
    if let Some(imports) = doc.get("imports").and_then(Item::as_array) {
        let imports: Vec<String> = imports
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect();
        if !imports.is_empty() {
            notices.push(Notice::Imports {
                imports,
                section: section_name(plugin_id, &[]),
            });
        }
    }

    let registry = registry_section(plugins, plugin_id, path)?;
    let config_path_key = dotted_key(plugin_id, &["registry", "config_path"]);
    let existing = match registry.and_then(|r| r.get("config_path")) {
        None => None,
        Some(item) => match item.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                return Err(DfinitError::ConfigPathNotString {
                    path: path.to_path_buf(),
                    key: config_path_key,
                    found: item.to_string().trim().to_string(),
                })
            }
        },
    };
    let legacy = registry
        .map(|r| legacy_registry_keys(r, plugin_id))
        .unwrap_or_default();

    // containerd splits config_path on ':' and searches the directories in order; dfinit writes
    // to the first one (as Dragonfly does).
    let first_entry = existing
        .as_deref()
        .and_then(|s| s.split(':').map(str::trim).find(|p| !p.is_empty()));

    if let (Some(value), Some(first)) = (existing.as_deref(), first_entry) {
        let config_path = PathBuf::from(first);
        if !config_path.is_absolute() {
            return Err(DfinitError::ConfigPathRelative {
                path: path.to_path_buf(),
                key: config_path_key,
                value: value.to_string(),
            });
        }
        if value.contains(':') {
            notices.push(Notice::SeveralConfigPaths {
                value: value.to_string(),
                used: config_path.clone(),
            });
        }
        if let Some(requested) = requested_config_path.filter(|r| *r != config_path) {
            notices.push(Notice::ConfigPathFlagIgnored {
                requested: requested.to_path_buf(),
                existing: config_path.clone(),
            });
        }
        if !legacy.is_empty() {
            notices.push(Notice::LegacyRegistryConfig { keys: legacy });
        }
        return Ok(ConfigPlan {
            version,
            plugin_id: plugin_id.to_string(),
            config_path,
            config_path_status: ConfigPathStatus::AlreadySet,
            new_contents: None,
            notices,
        });
    }

    if !legacy.is_empty() {
        return Err(DfinitError::LegacyRegistryConfig {
            path: path.to_path_buf(),
            keys: legacy,
        });
    }
    let config_path = requested_config_path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    if !config_path.is_absolute() {
        return Err(DfinitError::RelativeConfigPathFlag(config_path));
    }
    let config_path_str = config_path
        .to_str()
        .ok_or_else(|| DfinitError::NonUtf8ConfigPathFlag(config_path.clone()))?
        .to_string();
    let status = if existing.is_some() {
        ConfigPathStatus::WasEmpty
    } else {
        ConfigPathStatus::Added
    };
    set_config_path(&mut doc, plugin_id, &config_path_str, path)?;
    let new_contents = doc.to_string();

    // Re-read what will be written: it must parse and say what we meant.
    let check: DocumentMut =
        new_contents
            .parse()
            .map_err(|e: toml_edit::TomlError| DfinitError::EditCheck {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
    let written = registry_section(
        child(check.as_table(), "plugins", || "plugins".into(), path)?,
        plugin_id,
        path,
    )?
    .and_then(|r| r.get("config_path"))
    .and_then(Item::as_str)
    .map(str::to_string);
    if written.as_deref() != Some(config_path_str.as_str()) {
        return Err(DfinitError::EditCheck {
            path: path.to_path_buf(),
            reason: format!("{config_path_key} reads back as {written:?}"),
        });
    }

    Ok(ConfigPlan {
        version,
        plugin_id: plugin_id.to_string(),
        config_path,
        config_path_status: status,
        new_contents: Some(new_contents),
        notices,
    })
}
