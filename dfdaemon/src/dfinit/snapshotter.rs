//! `dfinit --snapshotter`: containerd's config made to unpack with dfdaemon's snapshotter, a
//! proxy plugin, with layer annotations passed to it as labels (Nydus layers are recognised by
//! them). Pure: text in, text out; `path` is only used in messages.

use std::path::{Path, PathBuf};

use toml_edit::{Item, Value};

use super::{dotted_key, ensure_table, parse_config, ConfigVersion, DfinitError};

/// The snapshotter to wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotterWiring {
    /// Its name in containerd (`[proxy_plugins.<name>]`, CRI `snapshotter`).
    pub name: String,
    /// dfdaemon's `snapshotter.socketPath`.
    pub socket: PathBuf,
}

/// The default name: existing `--snapshotter nydus` habits and RuntimeClasses keep working.
pub const DEFAULT_SNAPSHOTTER_NAME: &str = "nydus";
/// dfdaemon's default `snapshotter.socketPath`.
pub const DEFAULT_SNAPSHOTTER_SOCKET: &str = "/var/run/dragonfly/snapshotter.sock";

impl Default for SnapshotterWiring {
    fn default() -> Self {
        SnapshotterWiring {
            name: DEFAULT_SNAPSHOTTER_NAME.into(),
            socket: PathBuf::from(DEFAULT_SNAPSHOTTER_SOCKET),
        }
    }
}

/// Whether two values are equal (whatever their formatting and comments).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.value() == y.value(),
        (Value::Boolean(x), Value::Boolean(y)) => x.value() == y.value(),
        _ => false,
    }
}

/// Sets `key = value` in `table` (an existing value keeps the comment after it).
fn set(
    table: &mut Item,
    key: &str,
    value: Value,
    full_key: &str,
    path: &Path,
) -> Result<bool, DfinitError> {
    if let Item::Table(t) = &mut *table {
        t.set_implicit(false);
    }
    let t = table
        .as_table_like_mut()
        .ok_or_else(|| DfinitError::NotATable {
            path: path.to_path_buf(),
            key: full_key.to_string(),
        })?;
    match t.get_mut(key) {
        Some(item) if item.as_value().is_some_and(|v| same(v, &value)) => Ok(false),
        Some(item) => {
            let decor = item.as_value().map(|v| v.decor().clone());
            let mut value = value;
            if let Some(decor) = decor {
                *value.decor_mut() = decor;
            }
            *item = Item::Value(value);
            Ok(true)
        }
        None => {
            t.insert(key, Item::Value(value));
            Ok(true)
        }
    }
}

/// Wires `contents` (a containerd config of `version`, CRI plugin `cri_plugin_id` as
/// [`super::plan_containerd_config`] found it) to the snapshotter: `[proxy_plugins.<name>]`
/// with `type = "snapshot"` and the socket, and CRI's `snapshotter = <name>` with
/// `disable_snapshot_annotations = false` (under `[plugins.<cri>.containerd]` in versions 1 and
/// 2, under `[plugins."io.containerd.cri.v1.images"]` in version 3). The new text, or `None`
/// when the config already says all that.
pub fn plan_snapshotter(
    path: &Path,
    contents: &str,
    version: ConfigVersion,
    cri_plugin_id: &str,
    wiring: &SnapshotterWiring,
) -> Result<Option<String>, DfinitError> {
    let bad = DfinitError::BadSnapshotter;
    if wiring.name.is_empty()
        || !wiring
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad(format!(
            "snapshotter name {:?}: letters, digits, '-', '_' and '.' only",
            wiring.name
        )));
    }
    let socket = wiring
        .socket
        .to_str()
        .filter(|_| wiring.socket.is_absolute())
        .ok_or_else(|| {
            bad(format!(
                "snapshotter socket {:?} is not an absolute UTF-8 path",
                wiring.socket
            ))
        })?;
    let mut doc = parse_config(path, contents)?;
    let mut changed = false;
    {
        let root = doc.as_item_mut();
        let proxies = ensure_table(root, "proxy_plugins", true, "proxy_plugins", path)?;
        let key = format!("proxy_plugins.{}", wiring.name);
        let plugin = ensure_table(proxies, &wiring.name, false, &key, path)?;
        changed |= set(plugin, "type", Value::from("snapshot"), &key, path)?;
        changed |= set(plugin, "address", Value::from(socket), &key, path)?;
    }
    {
        let root = doc.as_item_mut();
        let plugins = ensure_table(root, "plugins", true, "plugins", path)?;
        let plugin = ensure_table(
            plugins,
            cri_plugin_id,
            true,
            &dotted_key(cri_plugin_id, &[]),
            path,
        )?;
        let (table, key) = match version {
            ConfigVersion::V3(_) => (plugin, dotted_key(cri_plugin_id, &[])),
            _ => {
                let key = dotted_key(cri_plugin_id, &["containerd"]);
                (ensure_table(plugin, "containerd", false, &key, path)?, key)
            }
        };
        changed |= set(
            table,
            "snapshotter",
            Value::from(wiring.name.as_str()),
            &key,
            path,
        )?;
        changed |= set(
            table,
            "disable_snapshot_annotations",
            Value::from(false),
            &key,
            path,
        )?;
    }
    Ok(changed.then(|| doc.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml_edit::DocumentMut;

    fn plan(text: &str, version: ConfigVersion, plugin: &str) -> Option<String> {
        plan_snapshotter(
            Path::new("config.toml"),
            text,
            version,
            plugin,
            &SnapshotterWiring::default(),
        )
        .unwrap()
    }

    #[test]
    fn versions_1_2_and_3_get_the_proxy_plugin_and_cri_settings_once() {
        let v2 = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\" # was\n";
        let out = plan(v2, ConfigVersion::V2, super::super::PLUGIN_GRPC_CRI).unwrap();
        let doc: DocumentMut = out.parse().unwrap();
        assert_eq!(
            doc["proxy_plugins"]["nydus"]["type"].as_str(),
            Some("snapshot")
        );
        assert_eq!(
            doc["proxy_plugins"]["nydus"]["address"].as_str(),
            Some(DEFAULT_SNAPSHOTTER_SOCKET)
        );
        let c = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"];
        assert_eq!(c["snapshotter"].as_str(), Some("nydus"));
        assert_eq!(c["disable_snapshot_annotations"].as_bool(), Some(false));
        assert!(out.contains("# was"), "the comment is kept: {out}");
        // Idempotent.
        assert_eq!(
            plan(&out, ConfigVersion::V2, super::super::PLUGIN_GRPC_CRI),
            None
        );

        let out = plan(
            "version = 3\n",
            ConfigVersion::V3(3),
            super::super::PLUGIN_CRI_IMAGES,
        )
        .unwrap();
        let doc: DocumentMut = out.parse().unwrap();
        let i = &doc["plugins"]["io.containerd.cri.v1.images"];
        assert_eq!(i["snapshotter"].as_str(), Some("nydus"));
        assert_eq!(i["disable_snapshot_annotations"].as_bool(), Some(false));

        let out = plan("", ConfigVersion::V1, super::super::PLUGIN_CRI_V1).unwrap();
        let doc: DocumentMut = out.parse().unwrap();
        assert_eq!(
            doc["plugins"]["cri"]["containerd"]["snapshotter"].as_str(),
            Some("nydus")
        );
    }

    #[test]
    fn bad_names_sockets_and_shapes_are_errors() {
        let bad = |w: SnapshotterWiring, text: &str| {
            plan_snapshotter(
                Path::new("c.toml"),
                text,
                ConfigVersion::V2,
                super::super::PLUGIN_GRPC_CRI,
                &w,
            )
            .unwrap_err()
            .to_string()
        };
        let e = bad(
            SnapshotterWiring {
                name: "a b".into(),
                ..Default::default()
            },
            "",
        );
        assert!(e.contains("\"a b\""), "{e}");
        let e = bad(
            SnapshotterWiring {
                socket: "rel.sock".into(),
                ..Default::default()
            },
            "",
        );
        assert!(e.contains("rel.sock"), "{e}");
        let e = bad(SnapshotterWiring::default(), "proxy_plugins = 3\n");
        assert!(e.contains("proxy_plugins"), "{e}");
    }
}
