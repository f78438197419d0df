use std::fmt;

/// A file on the share that could not be understood.
///
/// It names the file, the 1-based line when one is to blame, and what is wrong with it,
/// in one line, e.g. `vm1/vm1.vmdk:7: ddb.cvol.object: "x" is not a volume id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FormatError {
    /// The file, as the user knows it (a share-relative path).
    pub file: String,
    /// The 1-based line to blame, when there is one.
    pub line: Option<usize>,
    /// What is wrong, naming the field.
    pub message: String,
}

impl FormatError {
    /// An error about `file`, at `line` when known.
    pub fn new(file: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Splits text into lines that keep their terminators, so that joining them gives the
/// text back byte for byte.
pub(crate) fn raw_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
}

/// Refuses input that cannot be a small text file: NUL bytes are what a binary file
/// (a sparse VMDK, a disk image copied by mistake) gives away first.
pub(crate) fn check_text(file: &str, text: &str, max_len: usize) -> Result<(), FormatError> {
    if text.len() > max_len {
        return Err(FormatError::new(
            file,
            None,
            format!(
                "{} bytes is too large for this file (at most {max_len})",
                text.len()
            ),
        ));
    }
    if let Some(pos) = text.find('\0') {
        let line = text[..pos].matches('\n').count() + 1;
        return Err(FormatError::new(
            file,
            Some(line),
            "contains a NUL byte: not a text file",
        ));
    }
    Ok(())
}
