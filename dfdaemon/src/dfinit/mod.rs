//! `dfinit`: wires containerd's CRI image service to the node agent's registry mirror.
//!
//! containerd (1.5+) looks up per-registry settings in `<config_path>/<host[:port]>/hosts.toml`,
//! where `config_path` is a key of the CRI plugin's `registry` section in `config.toml`. dfinit
//!
//! 1. makes sure that key is set (adding it, with a pristine backup of `config.toml`, if it is
//!    missing or empty),
//! 2. writes one `hosts.toml` per `--registry` that sends pulls to the mirror first (with the
//!    `X-Dragonfly-Registry` header naming the upstream) and falls back to the registry itself,
//! 3. optionally writes `_default/hosts.toml`, a catch-all that sends every other registry through
//!    the mirror (the mirror learns the upstream from the `ns=` query containerd appends).
//!
//! The decisions are pure functions over strings ([`plan_containerd_config`],
//! [`render_registry_hosts_toml`], [`render_default_hosts_toml`], [`plan_snapshotter`]); [`run`]
//! is the thin shell that reads and (atomically) writes the files and returns a [`Report`] of
//! what it did. By module:
//! * `hosts`: the `--registry`/`--proxy-addr` URLs and the `hosts.toml` files for them;
//! * `config`: the edit of `config.toml` for the mirror (`config_path`);
//! * `snapshotter`: the edit of `config.toml` for `--snapshotter` (`proxy_plugins`, CRI keys);
//! * `files`: reading, backups, atomic writes;
//! * here: errors, options, the report, and [`run`].
//!
//! This mirrors Dragonfly's `dfinit` (`dragonfly-client-init/src/container_runtime/containerd.rs`)
//! where the two overlap, with two deliberate differences:
//! * a config without `version` (or with `version = 1`) is edited under `[plugins.cri]`, because
//!   containerd 1.6 and older read only the short plugin name from a version 1 file (1.7+ migrate
//!   `cri` to `io.containerd.grpc.v1.cri`, so the short name works everywhere);
//! * dfinit refuses to add `config_path` next to non-empty `registry.mirrors` or
//!   `registry.configs.*.tls`: containerd rejects that combination and does not load the CRI
//!   plugin at all.

mod config;
mod files;
mod hosts;
mod snapshotter;
pub use config::*;
use files::*;
pub use hosts::*;
pub use snapshotter::{
    plan_snapshotter, SnapshotterWiring, DEFAULT_SNAPSHOTTER_NAME, DEFAULT_SNAPSHOTTER_SOCKET,
};

use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    str::FromStr,
};

use toml_edit::{DocumentMut, InlineTable, Item, RawString, Table, TableLike, Value};
use tracing::{debug, info};

/// Where containerd reads its configuration by default.
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The `config_path` dfinit sets when containerd's config has none.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/containerd/certs.d";

/// The node agent's registry mirror (proxy) address.
pub const DEFAULT_PROXY_ADDR: &str = "http://127.0.0.1:4001";

/// Header that tells the mirror which upstream registry a request is for.
pub const REGISTRY_HEADER: &str = "X-Dragonfly-Registry";

/// Capabilities given to the mirror host in `hosts.toml` (the mirror never accepts pushes).
pub const MIRROR_CAPABILITIES: [&str; 2] = ["pull", "resolve"];

/// Suffix of the backups dfinit keeps of files it changes (`config.toml.dfinit.bak`).
pub const BACKUP_SUFFIX: &str = ".dfinit.bak";

/// First line of every `hosts.toml` dfinit writes. A file that starts with it is dfinit's to
/// overwrite; any other existing `hosts.toml` is backed up before it is replaced.
pub const MANAGED_MARKER: &str = "# Managed by dfinit";

/// Name of containerd's catch-all host directory.
pub const DEFAULT_HOST_DIR: &str = "_default";

const MANAGED_HEADER: &str =
    "# Managed by dfinit (Dragonfly node agent); changes are overwritten when dfinit runs again.\n";

/// Plugin id of the CRI image service in a version 3 config (containerd 2.x).
pub const PLUGIN_CRI_IMAGES: &str = "io.containerd.cri.v1.images";
/// Plugin id of the CRI plugin in a version 2 config (containerd 1.x, also read by 2.x).
pub const PLUGIN_GRPC_CRI: &str = "io.containerd.grpc.v1.cri";
/// Short plugin name of the CRI plugin in a version 1 config.
pub const PLUGIN_CRI_V1: &str = "cri";

const DOCKER_HUB_NAMESPACE: &str = "docker.io";
const DOCKER_HUB_SERVER: &str = "https://index.docker.io";
const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a `--registry` or `--proxy-addr` URL was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No `scheme://` prefix (`docker.io`, `127.0.0.1:5000`).
    #[error("missing scheme: write http://{0} or https://{0}")]
    MissingScheme(String),
    /// A scheme other than http or https.
    #[error("unsupported scheme \"{0}\": only http and https are allowed")]
    UnsupportedScheme(String),
    /// The `url` crate could not parse it.
    #[error("not a valid URL: {0}")]
    Parse(#[from] url::ParseError),
    /// A path after the host (`https://registry.example.com/v2`).
    #[error("has a path \"{0}\": give only scheme://host[:port]")]
    HasPath(String),
    /// A `?query` or `#fragment`.
    #[error("has a query or fragment: give only scheme://host[:port]")]
    HasQueryOrFragment,
    /// `user:password@` in the URL.
    #[error("contains credentials: give only scheme://host[:port]")]
    HasCredentials,
    /// `http://docker.io`: Docker Hub is only served over https.
    #[error("Docker Hub is only served over https: use https://docker.io")]
    PlainHttpDockerHub,
    /// The host is containerd's reserved catch-all directory name.
    #[error("\"_default\" is not a registry host; use --all-registries for the catch-all")]
    ReservedHost,
}

/// Everything that can stop dfinit. Each variant names the file, key or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum DfinitError {
    /// Neither `--registry` nor `--all-registries` was given.
    #[error("nothing to do: give at least one --registry URL, --all-registries or --snapshotter")]
    NothingToDo,
    /// Two `--registry` URLs map to the same host directory with different upstreams.
    #[error(
        "--registry {first} and --registry {second} both map to host directory \"{host_dir}\"; \
         give only one of them"
    )]
    DuplicateRegistry {
        host_dir: String,
        first: String,
        second: String,
    },
    /// `--config-path` is not absolute.
    #[error("--config-path {0}: must be an absolute path")]
    RelativeConfigPathFlag(PathBuf),
    /// `--config-path` is not valid UTF-8 (it cannot be written into config.toml).
    #[error("--config-path {0}: must be valid UTF-8")]
    NonUtf8ConfigPathFlag(PathBuf),
    /// containerd's config could not be read.
    #[error("cannot read containerd config {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// containerd's config is not valid TOML (the source is toml_edit's message with line/column).
    #[error("containerd config {path} is not valid TOML")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: toml_edit::TomlError,
    },
    /// The top-level `version` is not a containerd config version.
    #[error(
        "containerd config {path}: `version = {found}` is not a containerd config version \
         (expected the integer 1, 2 or 3)"
    )]
    UnsupportedVersion { path: PathBuf, found: String },
    /// A key on the way to `registry.config_path` holds something other than a table.
    #[error("containerd config {path}: `{key}` must be a table")]
    NotATable { path: PathBuf, key: String },
    /// `config_path` holds something other than a string.
    #[error("containerd config {path}: `{key}` must be a string, found `{found}`")]
    ConfigPathNotString {
        path: PathBuf,
        key: String,
        found: String,
    },
    /// `config_path` is relative.
    #[error(
        "containerd config {path}: `{key} = \"{value}\"` is a relative path; containerd resolves \
         it against its own working directory, set an absolute path"
    )]
    ConfigPathRelative {
        path: PathBuf,
        key: String,
        value: String,
    },
    /// Setting `config_path` would make containerd refuse to load the CRI plugin.
    #[error(
        "containerd config {path}: refusing to set config_path while {} {} set: containerd does \
         not load the CRI plugin when `mirrors` or `configs.*.tls` are combined with config_path. \
         Move these entries to hosts.toml files under a config_path directory \
         (see docs/containerd.md), remove them from config.toml, and run dfinit again",
        keys.join(", "),
        if keys.len() == 1 { "is" } else { "are" }
    )]
    LegacyRegistryConfig { path: PathBuf, keys: Vec<String> },
    /// `config_path`, or a host directory under it, exists but is not a directory.
    #[error("{path} exists but is not a directory ({what})")]
    NotADirectory { path: PathBuf, what: &'static str },
    /// A filesystem operation failed.
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `--snapshotter-name` or `--snapshotter-socket` cannot be written into the config.
    #[error("{0}")]
    BadSnapshotter(String),
    /// The edited config failed dfinit's own re-check (a bug in dfinit; nothing was written).
    #[error("internal error: the edited containerd config {path} does not check out: {reason}")]
    EditCheck { path: PathBuf, reason: String },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DfinitError {
    let path = path.to_path_buf();
    move |source| DfinitError::Io {
        action,
        path,
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// The shell: options, report, run
// ---------------------------------------------------------------------------------------------

/// What dfinit is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// containerd's `config.toml`.
    pub containerd_config: PathBuf,
    /// Registries that get their own `hosts.toml`.
    pub registries: Vec<Registry>,
    /// Also write `_default/hosts.toml` (every other registry through the mirror).
    pub all_registries: bool,
    /// The registry mirror.
    pub proxy: ProxyAddr,
    /// `config_path` to set when `config.toml` has none (default [`DEFAULT_CONFIG_PATH`]).
    pub config_path: Option<PathBuf>,
    /// Report what would change without writing anything.
    pub dry_run: bool,
    /// Also make CRI unpack with dfdaemon's snapshotter (`--snapshotter`).
    pub snapshotter: Option<SnapshotterWiring>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            containerd_config: PathBuf::from(DEFAULT_CONTAINERD_CONFIG),
            registries: Vec::new(),
            all_registries: false,
            proxy: ProxyAddr::default(),
            config_path: None,
            dry_run: false,
            snapshotter: None,
        }
    }
}

/// What happened (or, in a dry run, would happen) to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    /// The file did not exist and was written.
    Created,
    /// The file existed with other content and was replaced.
    Updated,
    /// The file already had the wanted content.
    Unchanged,
    /// An existing backup already holds the original; it was left as is.
    KeptExisting,
}

/// Which file a [`FileChange`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRole {
    /// containerd's `config.toml`.
    ContainerdConfig,
    /// `<config_path>/<host>/hosts.toml` for one registry.
    RegistryHosts { registry: String },
    /// `<config_path>/_default/hosts.toml`.
    DefaultHosts,
    /// A backup of `of`, taken before `of` was changed.
    Backup { of: PathBuf },
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The file.
    pub path: PathBuf,
    /// What it is.
    pub role: FileRole,
    /// What happened to it.
    pub action: FileAction,
}

/// The outcome of [`run`].
#[derive(Debug, Clone)]
pub struct Report {
    /// Nothing was written.
    pub dry_run: bool,
    /// containerd's `config.toml`.
    pub containerd_config: PathBuf,
    /// Its config version.
    pub version: ConfigVersion,
    /// The `[plugins]` key holding the CRI registry settings.
    pub plugin_id: String,
    /// Where the `hosts.toml` files are.
    pub config_path: PathBuf,
    /// Whether `config_path` was already set.
    pub config_path_status: ConfigPathStatus,
    /// The mirror the files point at.
    pub proxy: ProxyAddr,
    /// Per-file outcome, in the order the files were handled.
    pub files: Vec<FileChange>,
    /// Things the operator should know.
    pub notices: Vec<Notice>,
}

impl Report {
    /// Whether any file was (or would be) created or changed.
    pub fn changed(&self) -> bool {
        self.files
            .iter()
            .any(|f| matches!(f.action, FileAction::Created | FileAction::Updated))
    }

    /// Whether containerd must be restarted: only a `config.toml` change needs it; CRI reads
    /// `hosts.toml` on every pull.
    pub fn restart_required(&self) -> bool {
        self.files.iter().any(|f| {
            f.role == FileRole::ContainerdConfig && matches!(f.action, FileAction::Updated)
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            writeln!(f, "dry run: nothing is written")?;
        }
        writeln!(
            f,
            "containerd config {} (config version {}, registry section {})",
            self.containerd_config.display(),
            self.version,
            section_name(&self.plugin_id, &["registry"]),
        )?;
        match self.config_path_status {
            ConfigPathStatus::AlreadySet => {
                writeln!(f, "config_path already set: {}", self.config_path.display())?
            }
            ConfigPathStatus::Added | ConfigPathStatus::WasEmpty => writeln!(
                f,
                "config_path {}: {}",
                if self.dry_run { "would be set" } else { "set" },
                self.config_path.display()
            )?,
        }
        for notice in &self.notices {
            let kind = if notice.is_warning() {
                "warning"
            } else {
                "note"
            };
            writeln!(f, "{kind}: {notice}")?;
        }
        for change in &self.files {
            let verb = match (change.action, self.dry_run) {
                (FileAction::Created, false) => "created",
                (FileAction::Created, true) => "would create",
                (FileAction::Updated, false) => "updated",
                (FileAction::Updated, true) => "would update",
                (FileAction::Unchanged, _) => "unchanged",
                (FileAction::KeptExisting, _) => "kept",
            };
            let what = match &change.role {
                FileRole::ContainerdConfig => "containerd config".to_string(),
                FileRole::RegistryHosts { registry } => format!("mirror for {registry}"),
                FileRole::DefaultHosts => "mirror for all other registries".to_string(),
                FileRole::Backup { of } => format!("backup of the original {}", of.display()),
            };
            writeln!(f, "  {verb:<12} {} ({what})", change.path.display())?;
        }
        if !self.changed() {
            return writeln!(
                f,
                "Nothing to change: containerd is already wired to the mirror at {}.",
                self.proxy
            );
        }
        if self.restart_required() {
            writeln!(
                f,
                "containerd {} be restarted to read config_path (e.g. `systemctl restart \
                 containerd`); dfinit does not restart it.",
                if self.dry_run {
                    "would have to"
                } else {
                    "must"
                }
            )?;
        } else {
            writeln!(
                f,
                "No restart needed: containerd's CRI plugin reads hosts.toml on every pull."
            )?;
        }
        writeln!(
            f,
            "`ctr images pull` does not read config_path; pass `--hosts-dir {}` to it.",
            self.config_path.display()
        )
    }
}

/// Wires containerd to the mirror: reads and plans everything first, then (unless `dry_run`)
/// writes `hosts.toml` files, the `config.toml` backup and `config.toml`, each atomically.
/// Running it again with the same options changes nothing.
pub fn run(options: &Options) -> Result<Report, DfinitError> {
    if options.registries.is_empty() && !options.all_registries && options.snapshotter.is_none() {
        return Err(DfinitError::NothingToDo);
    }
    let mut registries: Vec<&Registry> = Vec::new();
    for registry in &options.registries {
        match registries
            .iter()
            .find(|r| r.host_dir() == registry.host_dir())
        {
            Some(seen) if seen.server() == registry.server() => {}
            Some(seen) => {
                return Err(DfinitError::DuplicateRegistry {
                    host_dir: registry.host_dir().to_string(),
                    first: seen.input.clone(),
                    second: registry.input.clone(),
                })
            }
            None => registries.push(registry),
        }
    }
    if let Some(requested) = &options.config_path {
        if !requested.is_absolute() {
            return Err(DfinitError::RelativeConfigPathFlag(requested.clone()));
        }
    }

    let config_file = &options.containerd_config;
    let text = fs::read_to_string(config_file).map_err(|source| DfinitError::ReadConfig {
        path: config_file.clone(),
        source,
    })?;
    let plan = plan_containerd_config(config_file, &text, options.config_path.as_deref())?;
    debug!(version = %plan.version, plugin_id = %plan.plugin_id, config_path = %plan.config_path.display(), "planned containerd config");
    let mut notices = plan.notices.clone();
    let mut files = Vec::new();
    let mut writes = Vec::new();

    let config_path_exists = check_dir(&plan.config_path, "containerd registry config_path")?;
    for registry in &registries {
        plan_hosts_file(
            &plan.config_path.join(registry.host_dir()),
            render_registry_hosts_toml(registry, &options.proxy),
            FileRole::RegistryHosts {
                registry: registry.server().to_string(),
            },
            &mut files,
            &mut writes,
            &mut notices,
        )?;
    }
    let default_dir = plan.config_path.join(DEFAULT_HOST_DIR);
    if options.all_registries {
        plan_hosts_file(
            &default_dir,
            render_default_hosts_toml(&options.proxy),
            FileRole::DefaultHosts,
            &mut files,
            &mut writes,
            &mut notices,
        )?;
    } else {
        let path = default_dir.join("hosts.toml");
        if read_optional(&path)?.is_some_and(|c| is_managed(&c)) {
            notices.push(Notice::StaleDefaultHosts { path });
        }
    }

    // hosts.toml files are written before config.toml (harmless until config_path points at
    // them), but the report lists config.toml first.
    let hosts_entries = files.len();
    let mut new_contents = plan.new_contents.clone();
    if let Some(w) = &options.snapshotter {
        let base = new_contents.as_deref().unwrap_or(&text);
        if let Some(wired) = plan_snapshotter(config_file, base, plan.version, &plan.plugin_id, w)?
        {
            new_contents = Some(wired);
        }
    }
    if let Some(new_contents) = &new_contents {
        // Write through a symlinked config.toml to the file it points at.
        let target = fs::canonicalize(config_file).map_err(io_err("resolve", config_file))?;
        let like = fs::metadata(&target).map_err(io_err("inspect", &target))?;
        let (backup, backup_action, notice) = plan_backup(config_file, text.as_bytes())?;
        notices.extend(notice);
        if backup_action == FileAction::Created {
            writes.push(PendingWrite {
                path: backup.clone(),
                contents: text.clone().into_bytes(),
                no_clobber: true,
                like: Some(like.clone()),
            });
        }
        files.push(FileChange {
            path: backup,
            role: FileRole::Backup {
                of: config_file.clone(),
            },
            action: backup_action,
        });
        writes.push(PendingWrite {
            path: target,
            contents: new_contents.clone().into_bytes(),
            no_clobber: false,
            like: Some(like),
        });
        files.push(FileChange {
            path: config_file.clone(),
            role: FileRole::ContainerdConfig,
            action: FileAction::Updated,
        });
    } else {
        files.push(FileChange {
            path: config_file.clone(),
            role: FileRole::ContainerdConfig,
            action: FileAction::Unchanged,
        });
    }
    files.rotate_left(hosts_entries);

    if !options.dry_run {
        if !config_path_exists && !writes.is_empty() {
            info!(path = %plan.config_path.display(), "creating config_path");
        }
        for write in &writes {
            if let Some(dir) = write.path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(io_err("create directory", dir))?;
            }
            write_atomic(
                &write.path,
                &write.contents,
                write.like.as_ref(),
                write.no_clobber,
            )?;
            info!(path = %write.path.display(), "wrote");
        }
    }

    Ok(Report {
        dry_run: options.dry_run,
        containerd_config: config_file.clone(),
        version: plan.version,
        plugin_id: plan.plugin_id,
        config_path: plan.config_path,
        config_path_status: plan.config_path_status,
        proxy: options.proxy.clone(),
        files,
        notices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    fn reg(s: &str) -> Registry {
        s.parse().unwrap()
    }

    fn proxy() -> ProxyAddr {
        ProxyAddr::default()
    }

    fn plan(contents: &str) -> ConfigPlan {
        plan_containerd_config(Path::new("/etc/containerd/config.toml"), contents, None).unwrap()
    }

    fn plan_err(contents: &str) -> DfinitError {
        plan_containerd_config(Path::new("/etc/containerd/config.toml"), contents, None)
            .unwrap_err()
    }

    fn config_path_in(contents: &str, plugin_id: &str) -> Option<String> {
        let doc: DocumentMut = contents.parse().unwrap();
        doc.get("plugins")?
            .get(plugin_id)?
            .get("registry")?
            .get("config_path")?
            .as_str()
            .map(str::to_string)
    }

    /// The lines of `new` that are not in `old` (and vice versa), for "only this changed" checks.
    fn changed_lines(old: &str, new: &str) -> (Vec<String>, Vec<String>) {
        let removed = old
            .lines()
            .filter(|l| !new.lines().any(|n| n == *l))
            .map(str::to_string)
            .collect();
        let added = new
            .lines()
            .filter(|l| !old.lines().any(|o| o == *l))
            .map(str::to_string)
            .collect();
        (removed, added)
    }

    // --- URLs ------------------------------------------------------------------------------

    #[test]
    fn docker_hub_aliases_map_to_docker_io_and_index_server() {
        for input in [
            "https://docker.io",
            "https://docker.io/",
            "https://index.docker.io",
            "https://registry-1.docker.io",
            "HTTPS://Docker.IO",
            "https://docker.io:443",
        ] {
            let r = reg(input);
            assert_eq!(r.host_dir(), "docker.io", "{input}");
            assert_eq!(r.server(), "https://index.docker.io", "{input}");
        }
    }

    #[test]
    fn registry_host_dir_is_host_and_port_as_written() {
        let r = reg("http://127.0.0.1:5000");
        assert_eq!(
            (r.host_dir(), r.server()),
            ("127.0.0.1:5000", "http://127.0.0.1:5000")
        );
        let r = reg("https://ghcr.io/");
        assert_eq!((r.host_dir(), r.server()), ("ghcr.io", "https://ghcr.io"));
        let r = reg("https://Registry.Example.com:443");
        assert_eq!(
            (r.host_dir(), r.server()),
            (
                "registry.example.com:443",
                "https://registry.example.com:443"
            )
        );
        let r = reg("http://[::1]:5000");
        assert_eq!(
            (r.host_dir(), r.server()),
            ("[::1]:5000", "http://[::1]:5000")
        );
    }

    #[test]
    fn bad_registry_urls_are_rejected_with_the_reason() {
        let cases: &[(&str, UrlError)] = &[
            ("docker.io", UrlError::MissingScheme("docker.io".into())),
            (
                "127.0.0.1:5000",
                UrlError::MissingScheme("127.0.0.1:5000".into()),
            ),
            (
                "localhost:5000",
                UrlError::MissingScheme("localhost:5000".into()),
            ),
            ("", UrlError::MissingScheme(String::new())),
            (
                "ftp://reg.example.com",
                UrlError::UnsupportedScheme("ftp".into()),
            ),
            (
                "https://reg.example.com/v2/",
                UrlError::HasPath("/v2/".into()),
            ),
            (
                "https://reg.example.com/library/nginx",
                UrlError::HasPath("/library/nginx".into()),
            ),
            ("https://reg.example.com?x=1", UrlError::HasQueryOrFragment),
            ("https://reg.example.com#x", UrlError::HasQueryOrFragment),
            ("https://user:pw@reg.example.com", UrlError::HasCredentials),
            ("http://docker.io", UrlError::PlainHttpDockerHub),
            ("http://_default", UrlError::ReservedHost),
        ];
        for (input, want) in cases {
            assert_eq!(&input.parse::<Registry>().unwrap_err(), want, "{input}");
        }
        assert!(matches!(
            "https://".parse::<Registry>(),
            Err(UrlError::Parse(_))
        ));
        assert!(matches!(
            "https://reg:99999".parse::<Registry>(),
            Err(UrlError::Parse(_))
        ));
        let msg = "docker.io".parse::<Registry>().unwrap_err().to_string();
        assert!(msg.contains("https://docker.io"), "{msg}");
    }

    #[test]
    fn proxy_addr_is_normalised_and_validated() {
        assert_eq!(
            "http://127.0.0.1:4001/"
                .parse::<ProxyAddr>()
                .unwrap()
                .as_str(),
            "http://127.0.0.1:4001"
        );
        assert_eq!(ProxyAddr::default().as_str(), DEFAULT_PROXY_ADDR);
        assert_eq!(
            "127.0.0.1:4001".parse::<ProxyAddr>().unwrap_err(),
            UrlError::MissingScheme("127.0.0.1:4001".into())
        );
        assert_eq!(
            "http://127.0.0.1:4001/v2".parse::<ProxyAddr>().unwrap_err(),
            UrlError::HasPath("/v2".into())
        );
    }

    // --- hosts.toml ------------------------------------------------------------------------

    #[test]
    fn registry_hosts_toml_has_dragonfly_layout() {
        let got = render_registry_hosts_toml(&reg("https://docker.io"), &proxy());
        let want = "\
# Managed by dfinit (Dragonfly node agent); changes are overwritten when dfinit runs again.
server = \"https://index.docker.io\"

[host.\"http://127.0.0.1:4001\"]
  capabilities = [\"pull\", \"resolve\"]
  skip_verify = true

[host.\"http://127.0.0.1:4001\".header]
  X-Dragonfly-Registry = \"https://index.docker.io\"
";
        assert_eq!(got, want);
        assert!(is_managed(got.as_bytes()));

        // What containerd will read from it.
        let doc: DocumentMut = got.parse().unwrap();
        assert_eq!(doc["server"].as_str(), Some("https://index.docker.io"));
        let host = &doc["host"]["http://127.0.0.1:4001"];
        let caps: Vec<&str> = host["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(caps, ["pull", "resolve"]);
        assert_eq!(host["skip_verify"].as_bool(), Some(true));
        assert_eq!(
            host["header"]["X-Dragonfly-Registry"].as_str(),
            Some("https://index.docker.io")
        );
    }

    #[test]
    fn registry_hosts_toml_for_plain_http_registry_and_other_proxy() {
        let p: ProxyAddr = "http://10.0.0.7:65001".parse().unwrap();
        let got = render_registry_hosts_toml(&reg("http://127.0.0.1:5000"), &p);
        let doc: DocumentMut = got.parse().unwrap();
        assert_eq!(doc["server"].as_str(), Some("http://127.0.0.1:5000"));
        assert_eq!(
            doc["host"]["http://10.0.0.7:65001"]["header"]["X-Dragonfly-Registry"].as_str(),
            Some("http://127.0.0.1:5000")
        );
    }

    #[test]
    fn default_hosts_toml_has_only_the_mirror_host() {
        let got = render_default_hosts_toml(&proxy());
        let want = "\
# Managed by dfinit (Dragonfly node agent); changes are overwritten when dfinit runs again.
[host.\"http://127.0.0.1:4001\"]
  capabilities = [\"pull\", \"resolve\"]
";
        assert_eq!(got, want);
        let doc: DocumentMut = got.parse().unwrap();
        assert!(doc.get("server").is_none());
        assert!(doc["host"]["http://127.0.0.1:4001"].get("header").is_none());
    }

    // --- config.toml planning --------------------------------------------------------------

    const V2_WITH_CONFIG_PATH: &str = r#"version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
"#;

    #[test]
    fn v2_with_config_path_is_left_alone() {
        let p = plan(V2_WITH_CONFIG_PATH);
        assert_eq!(p.version, ConfigVersion::V2);
        assert_eq!(p.plugin_id, PLUGIN_GRPC_CRI);
        assert_eq!(p.config_path, Path::new("/etc/containerd/certs.d"));
        assert_eq!(p.config_path_status, ConfigPathStatus::AlreadySet);
        assert!(p.new_contents.is_none());
        assert!(p.notices.is_empty(), "{:?}", p.notices);
    }

    #[test]
    fn v3_with_single_quoted_config_path_uses_cri_images() {
        // As `containerd config default` 2.x writes it.
        let p = plan(
            "version = 3\n\n[plugins]\n  [plugins.'io.containerd.cri.v1.images']\n    \
             [plugins.'io.containerd.cri.v1.images'.registry]\n      config_path = '/etc/containerd/certs.d'\n",
        );
        assert_eq!(p.version, ConfigVersion::V3(3));
        assert_eq!(p.plugin_id, PLUGIN_CRI_IMAGES);
        assert_eq!(p.config_path_status, ConfigPathStatus::AlreadySet);
        assert!(p.new_contents.is_none());
    }

    #[test]
    fn v3_without_config_path_gets_it_under_cri_images() {
        let original =
            "version = 3\n\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n";
        let p = plan(original);
        let new = p.new_contents.unwrap();
        assert_eq!(
            config_path_in(&new, PLUGIN_CRI_IMAGES).as_deref(),
            Some(DEFAULT_CONFIG_PATH)
        );
        assert!(config_path_in(&new, PLUGIN_GRPC_CRI).is_none());
        assert!(new.starts_with(original), "{new}");
        assert_eq!(p.config_path_status, ConfigPathStatus::Added);
    }

    #[test]
    fn v3_with_registry_under_grpc_cri_warns_that_it_is_ignored() {
        let p = plan(
            "version = 3\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/old\"\n",
        );
        assert_eq!(p.plugin_id, PLUGIN_CRI_IMAGES);
        assert_eq!(p.config_path, Path::new(DEFAULT_CONFIG_PATH));
        assert!(p.notices.iter().any(|n| matches!(
            n,
            Notice::RegistryUnderOtherPlugin { found, .. } if found.contains("io.containerd.grpc.v1.cri")
        )));
    }

    /// The registry part of `containerd config default` (containerd 1.6), with a user comment.
    const V2_DEFAULT_EXCERPT: &str = r#"# my containerd config, do not lose this comment
version = 2
root = "/var/lib/containerd"

[plugins]

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"  # pinned for air-gapped nodes

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = ""   # set me

      [plugins."io.containerd.grpc.v1.cri".registry.auths]

      [plugins."io.containerd.grpc.v1.cri".registry.configs]

      [plugins."io.containerd.grpc.v1.cri".registry.headers]

      [plugins."io.containerd.grpc.v1.cri".registry.mirrors]

    [plugins."io.containerd.grpc.v1.cri".x509_key_pair_streaming]
      tls_cert_file = ""

  [plugins."io.containerd.internal.v1.opt"]
    path = "/opt/containerd"
"#;

    #[test]
    fn empty_config_path_from_containerd_default_is_set_in_place() {
        let p = plan(V2_DEFAULT_EXCERPT);
        assert_eq!(p.config_path_status, ConfigPathStatus::WasEmpty);
        let new = p.new_contents.unwrap();
        let (removed, added) = changed_lines(V2_DEFAULT_EXCERPT, &new);
        assert_eq!(removed, [r#"      config_path = ""   # set me"#]);
        assert_eq!(
            added,
            [r#"      config_path = "/etc/containerd/certs.d"   # set me"#]
        );
        assert_eq!(
            new.len(),
            V2_DEFAULT_EXCERPT.len() + DEFAULT_CONFIG_PATH.len()
        );
    }

    #[test]
    fn missing_registry_section_is_added_and_comments_survive() {
        let original = r#"# top comment
version = 2

[plugins]
  # the CRI plugin
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6" # trailing

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"

  [plugins."io.containerd.internal.v1.opt"]
    path = "/opt/containerd"
"#;
        let p = plan(original);
        assert_eq!(p.config_path_status, ConfigPathStatus::Added);
        let new = p.new_contents.unwrap();
        let (removed, added) = changed_lines(original, &new);
        assert!(removed.is_empty(), "{removed:?}\n{new}");
        assert_eq!(
            added,
            [
                r#"    [plugins."io.containerd.grpc.v1.cri".registry]"#,
                r#"      config_path = "/etc/containerd/certs.d""#,
            ],
            "{new}"
        );
        // The new section sits inside the CRI plugin's block, before the next plugin.
        let registry_at = new.find(".registry]").unwrap();
        assert!(registry_at < new.find("internal.v1.opt").unwrap(), "{new}");
        assert!(registry_at > new.find(".containerd]").unwrap(), "{new}");
    }

    #[test]
    fn implicit_registry_table_gets_a_header_for_config_path() {
        let original = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry.headers]\n  Foo = [\"bar\"]\n";
        let new = plan(original).new_contents.unwrap();
        assert_eq!(
            config_path_in(&new, PLUGIN_GRPC_CRI).as_deref(),
            Some(DEFAULT_CONFIG_PATH)
        );
        let doc: DocumentMut = new.parse().unwrap();
        assert_eq!(
            doc["plugins"][PLUGIN_GRPC_CRI]["registry"]["headers"]["Foo"][0].as_str(),
            Some("bar")
        );
    }

    #[test]
    fn empty_and_plugin_less_configs_get_a_registry_section() {
        for original in ["", "version = 2\n", "version = 2\noom_score = 0\n"] {
            let p = plan(original);
            let new = p.new_contents.unwrap();
            assert_eq!(
                config_path_in(&new, p.plugin_id.as_str()).as_deref(),
                Some(DEFAULT_CONFIG_PATH),
                "{original:?} -> {new}"
            );
            assert!(new.starts_with(original));
        }
    }

    #[test]
    fn inline_and_dotted_registry_tables_are_edited_in_their_own_style() {
        let inline =
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  registry = { headers = {} }\n";
        let new = plan(inline).new_contents.unwrap();
        assert_eq!(
            config_path_in(&new, PLUGIN_GRPC_CRI).as_deref(),
            Some(DEFAULT_CONFIG_PATH)
        );
        assert!(new.contains("registry = {"), "{new}");

        let dotted =
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  registry.config_path = \"\"\n";
        let new = plan(dotted).new_contents.unwrap();
        assert_eq!(
            config_path_in(&new, PLUGIN_GRPC_CRI).as_deref(),
            Some(DEFAULT_CONFIG_PATH)
        );
        assert!(new.contains("registry.config_path = "), "{new}");
    }

    #[test]
    fn unversioned_config_uses_short_cri_name_and_says_so() {
        let p = plan("[plugins.cri]\n  sandbox_image = \"pause\"\n");
        assert_eq!(p.version, ConfigVersion::Unversioned);
        assert_eq!(p.plugin_id, PLUGIN_CRI_V1);
        assert!(p
            .notices
            .iter()
            .any(|n| matches!(n, Notice::Unversioned { .. }) && !n.is_warning()));
        let new = p.new_contents.unwrap();
        assert_eq!(
            config_path_in(&new, PLUGIN_CRI_V1).as_deref(),
            Some(DEFAULT_CONFIG_PATH)
        );

        // Nothing about CRI at all: still the short name (read by containerd 1.6 and 1.7+).
        let p = plan("root = \"/var/lib/containerd\"\n");
        assert_eq!(p.plugin_id, PLUGIN_CRI_V1);
        let msg = p.notices[0].to_string();
        assert!(msg.contains("version 1"), "{msg}");
    }

    #[test]
    fn version_1_with_long_plugin_id_is_used_but_warned_about() {
        let p = plan(
            "version = 1\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
        );
        assert_eq!(p.version, ConfigVersion::V1);
        assert_eq!(p.plugin_id, PLUGIN_GRPC_CRI);
        assert_eq!(p.config_path_status, ConfigPathStatus::AlreadySet);
        assert!(p
            .notices
            .iter()
            .any(|n| matches!(n, Notice::V1WithLongPluginId { .. }) && n.is_warning()));
    }

    #[test]
    fn colon_separated_config_path_uses_first_entry() {
        let p = plan(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n",
        );
        assert_eq!(p.config_path, Path::new("/etc/containerd/certs.d"));
        assert!(p
            .notices
            .iter()
            .any(|n| matches!(n, Notice::SeveralConfigPaths { .. })));
    }

    #[test]
    fn config_path_flag_is_used_only_when_config_has_none() {
        let flag = Path::new("/srv/certs.d");
        let p = plan_containerd_config(Path::new("c.toml"), "version = 2\n", Some(flag)).unwrap();
        assert_eq!(p.config_path, flag);
        assert_eq!(
            config_path_in(&p.new_contents.unwrap(), PLUGIN_GRPC_CRI).as_deref(),
            Some("/srv/certs.d")
        );

        let p =
            plan_containerd_config(Path::new("c.toml"), V2_WITH_CONFIG_PATH, Some(flag)).unwrap();
        assert_eq!(p.config_path, Path::new("/etc/containerd/certs.d"));
        assert!(p
            .notices
            .iter()
            .any(|n| matches!(n, Notice::ConfigPathFlagIgnored { .. })));

        let err = plan_containerd_config(Path::new("c.toml"), "", Some(Path::new("certs.d")))
            .unwrap_err();
        assert!(matches!(err, DfinitError::RelativeConfigPathFlag(_)));
    }

    #[test]
    fn imports_are_flagged() {
        let p = plan("version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n");
        assert!(p.notices.iter().any(
            |n| matches!(n, Notice::Imports { imports, .. } if imports == &["/etc/containerd/conf.d/*.toml"])
        ));
        assert!(plan("version = 2\nimports = []\n").notices.is_empty());
    }

    #[test]
    fn malformed_toml_error_names_file_and_position() {
        let err = plan_err("version = 2\n[plugins\nfoo = 1\n");
        let DfinitError::ParseConfig { path, source } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, Path::new("/etc/containerd/config.toml"));
        assert!(err.to_string().contains("/etc/containerd/config.toml"));
        let detail = source.to_string();
        assert!(detail.contains("line 2"), "{detail}");
    }

    #[test]
    fn bad_shapes_are_errors_naming_the_key() {
        let cases = [
            ("version = \"2\"\n", "version"),
            ("version = -1\n", "version"),
            ("version = 2.0\n", "version"),
            ("plugins = \"x\"\n", "`plugins`"),
            ("version = 2\nplugins = { \"io.containerd.grpc.v1.cri\" = 1 }\n", "\"io.containerd.grpc.v1.cri\""),
            (
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nregistry = \"x\"\n",
                ".registry`",
            ),
            (
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = 5\n",
                "config_path` must be a string, found `5`",
            ),
            (
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"certs.d\"\n",
                "relative path",
            ),
        ];
        for (input, needle) in cases {
            let msg = plan_err(input).to_string();
            assert!(msg.contains(needle), "{input:?}: {msg}");
            assert!(msg.contains("/etc/containerd/config.toml"), "{msg}");
        }
    }

    #[test]
    fn legacy_mirrors_block_adding_config_path() {
        let err = plan_err(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.example.com\"]\n",
        );
        let DfinitError::LegacyRegistryConfig { keys, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(
            keys,
            &[r#"plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io""#]
        );
        assert!(err.to_string().contains("mirrors"));

        let err = plan_err(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"reg.example.com\".tls]\n  insecure_skip_verify = true\n",
        );
        assert!(matches!(err, DfinitError::LegacyRegistryConfig { keys, .. }
            if keys == [r#"plugins."io.containerd.grpc.v1.cri".registry.configs."reg.example.com".tls"#]));
    }

    #[test]
    fn harmless_legacy_sections_do_not_block() {
        // Empty mirrors (as `containerd config default` writes) and auth-only configs are fine.
        let p = plan(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"reg.example.com\".auth]\n  username = \"u\"\n",
        );
        assert!(p.new_contents.is_some());
        assert!(p.notices.is_empty(), "{:?}", p.notices);
    }

    #[test]
    fn legacy_mirrors_next_to_existing_config_path_only_warn() {
        let p = plan(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n    endpoint = [\"https://m\"]\n",
        );
        assert!(p.new_contents.is_none());
        let notice = p
            .notices
            .iter()
            .find(|n| matches!(n, Notice::LegacyRegistryConfig { .. }))
            .unwrap();
        assert!(notice.is_warning());
        assert!(notice
            .to_string()
            .contains(r#"registry.mirrors."docker.io""#));
    }

    // --- run() against a temp dir ----------------------------------------------------------

    struct Fixture {
        dir: TempDir,
    }

    impl Fixture {
        fn new(config: &str) -> Self {
            let dir = TempDir::new().unwrap();
            fs::write(dir.path().join("config.toml"), config).unwrap();
            Self { dir }
        }
        fn config(&self) -> PathBuf {
            self.dir.path().join("config.toml")
        }
        fn certs(&self) -> PathBuf {
            self.dir.path().join("certs.d")
        }
        fn backup(&self) -> PathBuf {
            self.dir.path().join("config.toml.dfinit.bak")
        }
        fn options(&self, registries: &[&str], all: bool) -> Options {
            Options {
                containerd_config: self.config(),
                registries: registries.iter().map(|r| reg(r)).collect(),
                all_registries: all,
                proxy: proxy(),
                config_path: Some(self.certs()),
                dry_run: false,
                snapshotter: None,
            }
        }
        fn read(&self, rel: &str) -> String {
            fs::read_to_string(self.dir.path().join(rel)).unwrap()
        }
        /// Every file under the temp dir with its content, to prove nothing else changed.
        fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
            fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
                for entry in fs::read_dir(dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        out.push((path.clone(), Vec::new()));
                        walk(&path, out);
                    } else {
                        out.push((path.clone(), fs::read(&path).unwrap()));
                    }
                }
            }
            let mut out = Vec::new();
            walk(self.dir.path(), &mut out);
            out.sort();
            out
        }
    }

    fn action_of(report: &Report, path: &Path) -> FileAction {
        report
            .files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{} not in {:#?}", path.display(), report.files))
            .action
    }

    #[test]
    fn first_run_sets_config_path_with_pristine_backup_and_second_run_changes_nothing() {
        let fx = Fixture::new(V2_DEFAULT_EXCERPT);
        let opts = fx.options(&["https://docker.io", "http://127.0.0.1:5000"], true);

        let report = run(&opts).unwrap();
        assert!(report.changed() && report.restart_required());
        assert_eq!(report.config_path_status, ConfigPathStatus::WasEmpty);
        assert_eq!(action_of(&report, &fx.config()), FileAction::Updated);
        assert_eq!(action_of(&report, &fx.backup()), FileAction::Created);
        assert_eq!(fs::read_to_string(fx.backup()).unwrap(), V2_DEFAULT_EXCERPT);
        let certs = fx.certs();
        assert_eq!(
            config_path_in(&fx.read("config.toml"), PLUGIN_GRPC_CRI).as_deref(),
            certs.to_str()
        );
        assert!(fx
            .read("config.toml")
            .contains("# my containerd config, do not lose this comment"));
        assert_eq!(
            fx.read("certs.d/docker.io/hosts.toml"),
            render_registry_hosts_toml(&reg("https://docker.io"), &proxy())
        );
        assert_eq!(
            fx.read("certs.d/127.0.0.1:5000/hosts.toml"),
            render_registry_hosts_toml(&reg("http://127.0.0.1:5000"), &proxy())
        );
        assert_eq!(
            fx.read("certs.d/_default/hosts.toml"),
            render_default_hosts_toml(&proxy())
        );
        let text = report.to_string();
        assert!(text.contains("must be restarted"), "{text}");

        let before = fx.snapshot();
        let again = run(&opts).unwrap();
        assert!(!again.changed() && !again.restart_required());
        assert_eq!(again.config_path_status, ConfigPathStatus::AlreadySet);
        assert!(again
            .files
            .iter()
            .all(|f| f.action == FileAction::Unchanged));
        assert_eq!(fx.snapshot(), before);
        let text = again.to_string();
        assert!(text.contains("Nothing to change"), "{text}");
        assert_eq!(fs::read_to_string(fx.backup()).unwrap(), V2_DEFAULT_EXCERPT);
    }

    #[test]
    fn existing_config_path_leaves_config_untouched_and_needs_no_restart() {
        let fx = Fixture::new("");
        let certs = fx.certs();
        let config = format!(
            "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"{}\"\n",
            certs.display()
        );
        fs::write(fx.config(), &config).unwrap();
        let mut opts = fx.options(&["https://ghcr.io"], false);
        opts.config_path = None;

        let report = run(&opts).unwrap();
        assert!(report.changed());
        assert!(!report.restart_required());
        assert_eq!(fx.read("config.toml"), config);
        assert!(!fx.backup().exists());
        assert!(certs.join("ghcr.io/hosts.toml").is_file());
        assert!(!certs.join("_default").exists());
        assert!(report.to_string().contains("No restart needed"));
    }

    #[test]
    fn dry_run_writes_nothing() {
        let fx = Fixture::new("version = 2\n");
        let before = fx.snapshot();
        let mut opts = fx.options(&["https://docker.io"], true);
        opts.dry_run = true;
        let report = run(&opts).unwrap();
        assert!(report.changed() && report.restart_required());
        assert_eq!(fx.snapshot(), before);
        let text = report.to_string();
        assert!(text.contains("dry run"), "{text}");
        assert!(text.contains("would create"), "{text}");
        assert!(text.contains("would update"), "{text}");
        assert!(text.contains("would be set"), "{text}");
    }

    #[test]
    fn file_modes_are_kept() {
        let fx = Fixture::new("version = 2\n");
        fs::set_permissions(fx.config(), fs::Permissions::from_mode(0o640)).unwrap();
        run(&fx.options(&["https://docker.io"], false)).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&fx.config()), 0o640);
        assert_eq!(mode(&fx.backup()), 0o640);
        assert_eq!(mode(&fx.certs().join("docker.io/hosts.toml")), 0o644);
        // No temp files left behind.
        assert!(fx
            .snapshot()
            .iter()
            .all(|(p, _)| !p.to_string_lossy().ends_with(".tmp")));
    }

    #[test]
    fn backup_is_never_overwritten() {
        let fx = Fixture::new("version = 2\n# original one\n");
        let opts = fx.options(&["https://docker.io"], false);
        run(&opts).unwrap();

        // Restored by copying the backup back: the same original, backup reused.
        fs::copy(fx.backup(), fx.config()).unwrap();
        let report = run(&opts).unwrap();
        assert_eq!(action_of(&report, &fx.backup()), FileAction::KeptExisting);
        assert_eq!(
            fx.read("config.toml.dfinit.bak"),
            "version = 2\n# original one\n"
        );

        // Replaced by a different file without config_path: the first backup stays, the new
        // original goes next to it.
        fs::write(fx.config(), "version = 2\n# original two\n").unwrap();
        let report = run(&opts).unwrap();
        let second = fx.dir.path().join("config.toml.dfinit.bak.1");
        assert_eq!(action_of(&report, &second), FileAction::Created);
        assert_eq!(
            fx.read("config.toml.dfinit.bak"),
            "version = 2\n# original one\n"
        );
        assert_eq!(
            fx.read("config.toml.dfinit.bak.1"),
            "version = 2\n# original two\n"
        );
        assert!(report
            .notices
            .iter()
            .any(|n| matches!(n, Notice::EarlierBackupKept { .. })));
    }

    #[test]
    fn proxy_change_updates_managed_hosts_without_backup() {
        let fx = Fixture::new("version = 2\n");
        let mut opts = fx.options(&["https://docker.io"], false);
        run(&opts).unwrap();
        opts.proxy = "http://127.0.0.1:65001".parse().unwrap();
        let report = run(&opts).unwrap();
        let hosts = fx.certs().join("docker.io/hosts.toml");
        assert_eq!(action_of(&report, &hosts), FileAction::Updated);
        assert!(!report.restart_required());
        assert!(fx
            .read("certs.d/docker.io/hosts.toml")
            .contains("127.0.0.1:65001"));
        assert!(!fx.certs().join("docker.io/hosts.toml.dfinit.bak").exists());
    }

    #[test]
    fn hand_written_hosts_toml_is_backed_up_before_replacement() {
        let fx = Fixture::new("version = 2\n");
        let dir = fx.certs().join("docker.io");
        fs::create_dir_all(&dir).unwrap();
        let mine = "server = \"https://index.docker.io\"\n[host.\"https://mirror.corp\"]\n  capabilities = [\"pull\"]\n";
        fs::write(dir.join("hosts.toml"), mine).unwrap();

        let report = run(&fx.options(&["https://docker.io"], false)).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("hosts.toml.dfinit.bak")).unwrap(),
            mine
        );
        assert!(is_managed(&fs::read(dir.join("hosts.toml")).unwrap()));
        assert!(report
            .notices
            .iter()
            .any(|n| matches!(n, Notice::ReplacedUnmanagedHosts { .. }) && n.is_warning()));
    }

    #[test]
    fn default_hosts_only_with_all_registries_and_stale_one_is_reported() {
        let fx = Fixture::new("version = 2\n");
        run(&fx.options(&[], true)).unwrap();
        assert!(fx.certs().join("_default/hosts.toml").is_file());
        assert!(!fx.certs().join("docker.io").exists());

        let report = run(&fx.options(&["https://docker.io"], false)).unwrap();
        assert!(report
            .notices
            .iter()
            .any(|n| matches!(n, Notice::StaleDefaultHosts { .. })));
        // Not deleted: dfinit only adds.
        assert!(fx.certs().join("_default/hosts.toml").is_file());
    }

    #[test]
    fn config_path_that_is_a_file_is_an_error_and_nothing_is_written() {
        let fx = Fixture::new("version = 2\n");
        fs::write(fx.certs(), "not a dir").unwrap();
        let before = fx.snapshot();
        let err = run(&fx.options(&["https://docker.io"], false)).unwrap_err();
        assert!(
            matches!(&err, DfinitError::NotADirectory { path, .. } if *path == fx.certs()),
            "{err:?}"
        );
        assert!(err.to_string().contains("not a directory"));
        assert_eq!(fx.snapshot(), before);

        // Same for a host directory that is a file.
        fs::remove_file(fx.certs()).unwrap();
        fs::create_dir(fx.certs()).unwrap();
        fs::write(fx.certs().join("docker.io"), "x").unwrap();
        let err = run(&fx.options(&["https://docker.io"], false)).unwrap_err();
        assert!(matches!(err, DfinitError::NotADirectory { .. }), "{err:?}");
        assert_eq!(fx.read("config.toml"), "version = 2\n");
    }

    #[test]
    fn unreadable_or_malformed_config_is_an_error_and_nothing_is_written() {
        let fx = Fixture::new("version = 2\n[plugins\n");
        let before = fx.snapshot();
        let err = run(&fx.options(&["https://docker.io"], false)).unwrap_err();
        assert!(matches!(err, DfinitError::ParseConfig { .. }), "{err:?}");
        assert!(err.to_string().contains(&fx.config().display().to_string()));
        assert_eq!(fx.snapshot(), before);

        let mut opts = fx.options(&["https://docker.io"], false);
        opts.containerd_config = fx.dir.path().join("missing.toml");
        let err = run(&opts).unwrap_err();
        assert!(
            matches!(&err, DfinitError::ReadConfig { path, .. } if path.ends_with("missing.toml")),
            "{err:?}"
        );
    }

    #[test]
    fn option_errors() {
        let fx = Fixture::new("version = 2\n");
        assert!(matches!(
            run(&fx.options(&[], false)),
            Err(DfinitError::NothingToDo)
        ));
        let err = run(&fx.options(
            &["http://reg.example.com", "https://reg.example.com"],
            false,
        ))
        .unwrap_err();
        assert!(
            matches!(&err, DfinitError::DuplicateRegistry { host_dir, .. } if host_dir == "reg.example.com"),
            "{err:?}"
        );
        // The same registry twice (also via an alias) is fine.
        run(&fx.options(&["https://docker.io", "https://index.docker.io"], false)).unwrap();
        let mut opts = fx.options(&["https://docker.io"], false);
        opts.config_path = Some(PathBuf::from("relative/certs.d"));
        assert!(matches!(
            run(&opts),
            Err(DfinitError::RelativeConfigPathFlag(_))
        ));
    }

    #[test]
    fn symlinked_config_is_written_through_the_link() {
        let fx = Fixture::new("version = 2\n");
        let real = fx.dir.path().join("real.toml");
        fs::rename(fx.config(), &real).unwrap();
        symlink(&real, fx.config()).unwrap();
        run(&fx.options(&["https://docker.io"], false)).unwrap();
        assert!(fs::symlink_metadata(fx.config())
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(fs::read_to_string(&real).unwrap().contains("config_path"));
        assert_eq!(fx.read("config.toml.dfinit.bak"), "version = 2\n");
    }
}
