//! Configs written for upstream Dragonfly run as they are: keys of upstream's configs that
//! this implementation has no use for (Redis for job queues, log rotation flags, plugin
//! directories, ...) are taken out of the YAML before it is parsed, each with a warning naming
//! the key and why it is ignored. Every other key is still parsed strictly, so a typo remains an
//! error naming the key.

use serde_yaml_ng::Value;

/// An upstream key (dotted path) that is accepted and ignored, and why.
pub type Ignored = (&'static str, &'static str);

/// Removes every key of `ignored` present in `doc`; one warning per key removed, as
/// "`<key>` is ignored: <why>". A path whose parent is not a mapping is left alone (the strict
/// parse then reports it).
pub fn strip(doc: &mut Value, ignored: &[Ignored]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (path, why) in ignored {
        if remove(doc, path) {
            warnings.push(format!("`{path}` is ignored: {why}"));
        }
    }
    warnings
}

/// Removes `path` from `node`; a mapping emptied by the removal goes too (so
/// `database: {redis: ...}` leaves no empty `database` behind).
fn remove(node: &mut Value, path: &str) -> bool {
    let Value::Mapping(map) = node else {
        return false;
    };
    match path.split_once('.') {
        None => map.remove(path).is_some(),
        Some((head, rest)) => {
            let Some(child) = map.get_mut(head) else {
                return false;
            };
            let removed = remove(child, rest);
            if removed && matches!(child, Value::Mapping(m) if m.is_empty()) {
                map.remove(head);
            }
            removed
        }
    }
}

/// Parses `text` (YAML) into `T` after taking out the `ignored` keys; the value and the
/// warnings. An empty text is `T::default()`.
pub fn parse<T>(text: &str, ignored: &[Ignored]) -> Result<(T, Vec<String>), String>
where
    T: serde::de::DeserializeOwned + Default,
{
    if text.trim().is_empty() {
        return Ok((T::default(), Vec::new()));
    }
    let mut doc: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    if doc.is_null() {
        return Ok((T::default(), Vec::new()));
    }
    let warnings = strip(&mut doc, ignored);
    // The error names the key's path (`proxy.registryMirror: unknown field ...`).
    let value = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    Ok((value, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Cfg {
        server: Server,
    }
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Server {
        port: u16,
    }

    const IGNORED: &[Ignored] = &[
        ("server.logDir", "logs go to stderr"),
        ("database.redis", "no Redis is needed"),
    ];

    #[test]
    fn known_keys_are_warned_about_and_typos_stay_errors() {
        let (c, w): (Cfg, _) = parse(
            "server:\n  port: 9\n  logDir: /var/log\ndatabase:\n  redis:\n    addrs: [a]\n",
            IGNORED,
        )
        .unwrap();
        assert_eq!(c.server.port, 9);
        assert_eq!(
            w,
            [
                "`server.logDir` is ignored: logs go to stderr",
                "`database.redis` is ignored: no Redis is needed"
            ]
        );
        let e = parse::<Cfg>("server:\n  prot: 9\n", IGNORED).unwrap_err();
        assert!(e.contains("prot"), "{e}");
        // `database` itself is not known: with another key under it, it is still an error.
        let e = parse::<Cfg>("database:\n  mysql: {}\n", IGNORED).unwrap_err();
        assert!(e.contains("database"), "{e}");
        let (_, w) = parse::<Cfg>("", IGNORED).unwrap();
        assert!(w.is_empty());
    }
}
