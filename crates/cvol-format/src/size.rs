//! Disk sizes as users write them (`64M`, `10G`, `1T`).

/// Bytes in one sector: the unit of VMDK extents and of every disk size.
pub const SECTOR_SIZE: u64 = 512;

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional unit.
    #[error("invalid size {0:?}: expected a number with an optional unit K, M, G, T or P (powers of 1024), e.g. 64M")]
    Syntax(String),
    /// Larger than a u64 holds.
    #[error("invalid size {0:?}: too large")]
    TooLarge(String),
    /// Zero bytes.
    #[error("invalid size {0:?}: a disk cannot be empty")]
    Zero(String),
    /// Not a whole number of 512-byte sectors.
    #[error("invalid size {0:?}: {1} bytes is not a multiple of 512")]
    Unaligned(String, u64),
}

/// Parses a disk size: a number of bytes, or a number with a binary unit
/// (`K`, `M`, `G`, `T`, `P`, optionally followed by `iB` or `B`, any case).
/// The result is never zero and always a multiple of [`SECTOR_SIZE`].
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::Syntax(text.to_string()));
    }
    let unit = unit.to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err(SizeError::Syntax(text.to_string())),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| SizeError::TooLarge(text.to_string()))?;
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::TooLarge(text.to_string()))?;
    if bytes == 0 {
        return Err(SizeError::Zero(text.to_string()));
    }
    if !bytes.is_multiple_of(SECTOR_SIZE) {
        return Err(SizeError::Unaligned(text.to_string(), bytes));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2gib"), Ok(2 << 30));
        assert_eq!(parse_size("1KB"), Ok(1024));
    }

    #[test]
    fn refusals() {
        assert!(matches!(parse_size("0"), Err(SizeError::Zero(_))));
        assert!(matches!(
            parse_size("1000"),
            Err(SizeError::Unaligned(_, 1000))
        ));
        assert!(matches!(parse_size("1X"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("-1G"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("G"), Err(SizeError::Syntax(_))));
        assert!(matches!(
            parse_size("99999999P"),
            Err(SizeError::TooLarge(_))
        ));
        assert!(matches!(
            parse_size("99999999999999999999999"),
            Err(SizeError::TooLarge(_))
        ));
    }
}
