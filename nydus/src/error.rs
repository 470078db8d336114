//! Errors found while decoding or validating on-disk RAFS structures.

/// What is wrong with a piece of on-disk metadata.
///
/// `what` names the structure (the Rust type name, e.g. `"SuperBlock"`), `field` the on-disk field
/// name as the format documentation spells it (e.g. `"s_blkszbits"`), and `offset` the byte offset
/// of that field inside its structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    #[error("{what}: truncated, need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },

    /// A magic number does not match.
    #[error("{what}: bad magic {found:#010x} at offset {offset}, expected {expected:#010x}")]
    BadMagic {
        what: &'static str,
        offset: usize,
        expected: u32,
        found: u32,
    },

    /// A field holds a value the format does not allow.
    #[error("{what}.{field} (offset {offset}) = {value:#x}: {reason}")]
    BadField {
        what: &'static str,
        field: &'static str,
        offset: usize,
        value: u64,
        reason: String,
    },

    /// A numeric code (compressor, digest algorithm, file type, ...) that has no meaning.
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: u64 },

    /// A property of a whole object (not of one field) is wrong, e.g. the bootstrap size.
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

impl FormatError {
    /// Shorthand for [`FormatError::BadField`].
    pub(crate) fn field(
        what: &'static str,
        field: &'static str,
        offset: usize,
        value: impl Into<u64>,
        reason: impl Into<String>,
    ) -> Self {
        Self::BadField {
            what,
            field,
            offset,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// The field this error is about, if it is about one field.
    pub fn field_name(&self) -> Option<&'static str> {
        match self {
            Self::BadField { field, .. } => Some(field),
            Self::BadMagic { .. } => Some("magic"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_structure_field_offset_and_value() {
        let e = FormatError::field("SuperBlock", "s_blkszbits", 12, 10u8, "must be 9 or 12");
        assert_eq!(
            e.to_string(),
            "SuperBlock.s_blkszbits (offset 12) = 0xa: must be 9 or 12"
        );
        assert_eq!(e.field_name(), Some("s_blkszbits"));

        let e = FormatError::Truncated {
            what: "Dirent",
            need: 12,
            have: 3,
        };
        assert_eq!(e.to_string(), "Dirent: truncated, need 12 bytes, have 3");
        assert_eq!(e.field_name(), None);
    }
}
